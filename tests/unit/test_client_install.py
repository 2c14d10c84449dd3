"""`pip install shardsearch` is the client library alone: its declared dependencies are grpcio, protobuf and numpy,
and shardsearch.client imports with every server-side dependency made unimportable. (.ci/installed.sh client installs
the wheel alone into a fresh venv and runs the README quickstart with it.)"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = ["faiss", "tritonclient", "PIL", "redis", "prometheus_client", "tqdm", "grpc_health", "grpc_reflection",
               "pythonjsonlogger", "packaging", "coordinator", "shard_server", "encoder_client"]


def test_the_base_install_declares_only_what_the_client_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = sorted(requirement.split(">")[0].split("=")[0] for requirement in project["dependencies"])
    assert names == ["grpcio", "numpy", "protobuf"]
    extras = project["optional-dependencies"]
    assert "shardsearch[server]" in extras["cpu"] and "shardsearch[server]" in extras["gpu"]


def test_the_client_imports_without_any_server_dependency() -> None:
    program = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_ONLY!r}:
            raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
sys.meta_path.insert(0, Block())
import shardsearch.client as client
with client.Client("127.0.0.1:1", timeout=0.5) as c:
    try:
        c.list_collections()
    except client.Unavailable as exc:
        print("unavailable as expected")
"""
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "unavailable as expected" in done.stdout


def test_the_command_line_names_the_extra_it_needs_when_the_server_parts_are_missing() -> None:
    program = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "prometheus_client":
            raise ModuleNotFoundError("blocked", name=name)
sys.meta_path.insert(0, Block())
from shardsearch.tools import cli
cli.main(["local"])
"""
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "pip install 'shardsearch[server]'" in done.stderr, done.stderr
