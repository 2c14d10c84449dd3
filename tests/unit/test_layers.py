"""The layers, as the folders show them, and no import pointing up: the shared base (shardsearch/*.py,
shardsearch/security) imports neither the servers nor the tools; the servers (coordinator, shard_server,
encoder_client) import no tool; the client library imports only the base it needs (grpc, numpy, the messages)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ("shardsearch.coordinator", "shardsearch.shard_server", "shardsearch.encoder_client")
TOOLS = ("shardsearch.tools",)
CLIENT = ("shardsearch.client", "shardsearch.client_channels", "shardsearch.client_messages", "shardsearch.client_errors")


def imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from a import b` counts as a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def offending(files: list[Path], banned: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in files:
        hits = sorted(name for name in imports(path) if any(name == b or name.startswith(b + ".") for b in banned))
        if hits:
            bad[str(path.relative_to(ROOT))] = hits
    return bad


def base_files() -> list[Path]:
    own = [p for p in (ROOT / "shardsearch").glob("*.py") if p.name != "__main__.py"]
    return own + sorted((ROOT / "shardsearch" / "security").glob("*.py"))


def server_files() -> list[Path]:
    return [p for folder in ("coordinator", "shard_server", "encoder_client") for p in sorted((ROOT / folder).rglob("*.py"))]


def test_the_shared_base_imports_neither_the_servers_nor_the_tools() -> None:
    assert offending(base_files(), SERVERS + TOOLS) == {}


def test_the_servers_import_no_tool() -> None:
    assert offending(server_files(), TOOLS) == {}


def test_the_client_library_imports_only_grpc_numpy_the_messages_and_itself() -> None:
    files = [ROOT / (name.replace(".", "/") + ".py") for name in CLIENT]
    allowed = ("shardsearch.v1", *CLIENT)
    for path in files:
        ours = {n for n in imports(path) if n.startswith("shardsearch")}
        assert all(any(n == a or n.startswith(a + ".") for a in allowed) for n in ours), (path.name, ours)


def test_the_folders_are_the_layers_the_readme_names() -> None:
    readme = (ROOT / "README.md").read_text()
    for folder in ("shardsearch/tools/", "coordinator/", "shard_server/", "encoder_client/", "shardsearch/"):
        assert f"`{folder}`" in readme, folder
