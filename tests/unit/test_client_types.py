"""The client library is typed: it and a program using it pass mypy --strict (py.typed ships with the package)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]

PROGRAM = '''
import asyncio

import numpy as np

from shardsearch.client import AsyncClient, Client, Hit, Item, NotFound, all_of, match, number_range


def top(client: Client, query: np.ndarray) -> list[str]:
    hits: list[Hit] = client.search("c", query, k=5, filter=all_of(match("kind", "cat"), number_range("n", gte=1)))
    try:
        items: list[Item] = client.get("c", ["x"])
    except NotFound as exc:
        print(exc.details, exc.code)
        items = []
    return [h.id for h in hits] + [i.id for i in items]


async def count(client: AsyncClient) -> int:
    return len([i async for i in client.list_ids("c")]) + await client.delete("c", ["x"])


if __name__ == "__main__":
    with Client("localhost:50051") as c:
        print(top(c, np.zeros(8, np.float32)))
    print(asyncio.run(count(AsyncClient("localhost:50051"))))
'''


def test_the_client_and_a_program_using_it_pass_mypy_strict(tmp_path: Path) -> None:
    program = tmp_path / "uses_the_client.py"
    program.write_text(PROGRAM)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(program), "shardsearch/client.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (ROOT / "shardsearch" / "py.typed").exists()
