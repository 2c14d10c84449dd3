"""How a `shardsearch` command ends when it cannot do its work: the way argparse ends on a bad flag."""

from __future__ import annotations

import sys
from typing import NoReturn


def fail(command: str, message: object, status: int = 2) -> NoReturn:
    """One line `shardsearch <command>: error: <message>` on stderr, then exit `status` (2: could not start)."""
    print(f"shardsearch {command}: error: {message}", file=sys.stderr)
    sys.exit(status)
