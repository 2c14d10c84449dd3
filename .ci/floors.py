"""Prints a pip constraints file pinning every dependency (base, the `server` and `cpu` extras) to the floor pyproject.toml
declares, so CI can prove those floors are true: `pip install -c <(python .ci/floors.py) '.[cpu]'`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
extras = project["optional-dependencies"]
for requirement in [*project["dependencies"], *extras["server"], *extras["cpu"]]:
    if requirement.startswith(project["name"] + "["):  # the cpu extra names the server extra
        continue
    match = re.fullmatch(r"([A-Za-z0-9_.\[\]-]+)\s*>=\s*([^,;\s]+).*", requirement)
    if match is None:
        raise SystemExit(f"no floor (>=) in {requirement!r}: every dependency must declare its oldest working version")
    name = match.group(1).split("[")[0]
    print(f"{name}=={match.group(2)}")
