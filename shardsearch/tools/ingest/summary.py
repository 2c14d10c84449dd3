"""The end-of-run report: counts, failures grouped by reason with a few example ids each, time and rate."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from shardsearch.tools.ingest.writer import BatchResult

MAX_EXAMPLES = 10
_POSITION = re.compile(r"\b(items|ids)\[\d+\]")


def group_reason(reason: str) -> str:
    """A failure reason as it is grouped: the position inside the request ("items[3]") says nothing about the item
    (the ids say which), so it is written "items[i]" and failures differing only by it are grouped together."""
    return _POSITION.sub(r"\1[i]", reason)


@dataclass
class FailureGroup:
    reason: str
    count: int = 0
    examples: list[str] = field(default_factory=list)
    """Up to MAX_EXAMPLES ids, the first to fail for this reason."""

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "count": self.count, "examples": self.examples}


@dataclass
class IngestSummary:
    """What a run did; `add` each batch's result, then read the counts, `to_json()` or `text()`."""

    collection: str
    source: str
    address: str = ""
    done: int = 0
    skipped: int = 0
    failed: int = 0
    failures: dict[str, FailureGroup] = field(default_factory=dict)
    """By reason, in the order the reasons first appeared."""
    elapsed_s: float = 0.0

    def add(self, result: BatchResult) -> None:
        self.done += result.done
        self.skipped += result.skipped
        self.failed += len(result.failures)
        for item_id, reason in result.failures:
            group = self.failures.setdefault(group_reason(reason), FailureGroup(group_reason(reason)))
            group.count += 1
            if len(group.examples) < MAX_EXAMPLES:
                group.examples.append(item_id)

    @property
    def processed(self) -> int:
        return self.done + self.skipped + self.failed

    @property
    def items_per_s(self) -> float:
        """Items written per second (skipped and failed ones not counted)."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection, "source": self.source, "address": self.address, "done": self.done,
            "skipped": self.skipped, "failed": self.failed,
            "failures": [group.to_json() for group in self.failures.values()],
            "elapsed_s": round(self.elapsed_s, 3), "items_per_s": round(self.items_per_s, 1),
        }

    def text(self) -> str:
        lines = [
            f"{self.collection!r} from {self.source}: {self.done} done, {self.skipped} skipped (already stored), "
            f"{self.failed} failed, in {self.elapsed_s:.2f}s ({self.items_per_s:.0f} items/s)"
        ]
        for group in self.failures.values():
            more = f", +{group.count - len(group.examples)} more" if group.count > len(group.examples) else ""
            lines.append(f"failed x{group.count}: {group.reason}\n  ids: {', '.join(group.examples)}{more}")
        return "\n".join(lines)
