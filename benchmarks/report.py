"""Writing a benchmark's results: its JSON and its section of the Markdown report (docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_section(path: Path, heading: str, section: str) -> None:
    """Replaces the section that starts with `heading` (up to the next "## ") in the report, or appends it."""
    text = path.read_text() if path.exists() else ""
    start = text.find(heading)
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    path.write_text(text)


def save(results: dict[str, Any], json_path: Path, heading: str, section: str, out: Path | None) -> None:
    """Writes the results as JSON, prints the section, and puts it in the report `out` when one is given."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    print(section)
    if out:
        write_section(out, heading, section)
