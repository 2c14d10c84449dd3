"""The container images (Dockerfile, Dockerfile.gpu) agree with the package and with k8s/. Docker itself is not run
here: these check what can be checked offline."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

from tests.k8s import manifests as m

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")


def instructions(name: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / name).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and p[0] != "#"]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_image_gets_the_whole_package_and_nothing_it_ignores(dockerfile: str) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources = {  # COPY SRC... DEST from the build context
        s for op, arg in instructions(dockerfile) if op == "COPY" and "--from" not in arg for s in arg.split()[:-1]
    }
    assert packages <= sources, f"{dockerfile} misses {packages - sources}"
    assert {"pyproject.toml", "README.md"} <= sources  # the build reads both
    for source in sources:
        assert (ROOT / source).exists() and not ignored(source), source


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_image_runs_as_the_user_and_ports_k8s_expects(dockerfile: str, cpu: list[m.Obj]) -> None:
    ops = instructions(dockerfile)
    (user,) = [arg for op, arg in ops if op == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root USER lets runAsNonRoot verify it"
    exposed = {int(p) for op, arg in ops if op == "EXPOSE" for p in arg.split()}
    (entrypoint,) = [arg for op, arg in ops if op == "ENTRYPOINT"]
    assert entrypoint == '["shardsearch"]'
    for kind, name in (("Deployment", "coordinator"), ("StatefulSet", "shard")):
        c = m.container(cpu, kind, name)
        assert c.spec["args"][0] == name, "the subcommand is the container's first argument"
        assert c.pod["securityContext"]["runAsUser"] == int(uid) and c.pod["securityContext"]["runAsGroup"] == int(gid)
        assert {p["containerPort"] for p in c.spec["ports"]} <= exposed


def test_each_image_installs_one_faiss_build_without_an_uninstall_step() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not any(dep.startswith("faiss") for dep in project["dependencies"]), "FAISS is chosen by an extra"
    # each image's extra: the server parts plus exactly one FAISS build
    assert [d.split(">")[0] for d in extras["cpu"]] == ["shardsearch[server]", "faiss-cpu"]
    assert [d.split(">")[0] for d in extras["gpu"]] == ["shardsearch[server]", "faiss-gpu"]
    assert not any(dep.startswith("faiss") for dep in extras["server"])
    for dockerfile, extra in (("Dockerfile", "cpu"), ("Dockerfile.gpu", "gpu")):
        runs = " ".join(arg for op, arg in instructions(dockerfile) if op == "RUN")
        assert f"'.[{extra}]'" in runs and f"'shardsearch[{extra}]'" in runs, dockerfile
        assert "uninstall" not in runs and "--force-reinstall" not in runs, dockerfile
    assert all("--no-index" in part for part in runs.split("&&") if "pip install" in part), "no downloads at install"
