"""The HPA's metric, the adapter rule, the alerts and the Grafana dashboard name metrics a live cluster exports."""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from shardsearch.tools.local import LocalCluster
from tests.k8s import manifests as m

DASHBOARD = m.K8S / "grafana" / "shardsearch-dashboard.json"
ADAPTER_CONFIG = m.K8S / "prometheus-adapter" / "config.yaml"
# Not ours: Prometheus's own scrape health and kube-state-metrics (the alerts on pods and the autoscaler).
EXTERNAL = {
    "up", "kube_statefulset_status_replicas_ready", "kube_statefulset_replicas",
    "kube_horizontalpodautoscaler_status_current_replicas", "kube_horizontalpodautoscaler_spec_max_replicas",
}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$namespace": ".*"}
SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count", "_created"), "counter": ("_created",), "summary": ("_sum", "_count"),
}


def exposition(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def series_names(text: str) -> dict[str, str]:
    """Every series name a Prometheus scrape of this text can hold -> its family's type. Families are listed with
    `# TYPE` even before their first sample (labelled metrics), and prometheus_client names counters `*_total`."""
    names: dict[str, str] = {}
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names[family] = kind
        base = family.removesuffix("_total") if kind == "counter" else family
        names.update({base + suffix: kind for suffix in SUFFIXES.get(kind, ())})
    return names


@dataclass
class Scrape:
    coordinator_text: str
    shard_texts: list[str]

    @property
    def coordinator(self) -> dict[str, str]:
        return series_names(self.coordinator_text)

    @property
    def everything(self) -> set[str]:
        return set(self.coordinator).union(*(series_names(text) for text in self.shard_texts))


@pytest.fixture(scope="module")
def live() -> Iterator[Scrape]:
    """A real coordinator and one shard of two replicas (replicas export the catch-up metrics), scraped once."""
    with LocalCluster(shards=1, replicas=2, metrics=True) as cluster:
        assert cluster.coordinator is not None
        shards = [exposition(p.metrics_port) for p in cluster.shard_procs]
        yield Scrape(exposition(cluster.coordinator.metrics_port), shards)


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects; parsing it also proves its syntax and function names."""
    m.require("promql_parser")
    import promql_parser

    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()
    promql_parser.walk(
        promql_parser.parse(expr),
        lambda node: names.add(node.name) if isinstance(node, promql_parser.VectorSelector) and node.name else None,
    )
    return names


def unknown(exprs: list[str], exported: set[str], defined: set[str] = frozenset()) -> dict[str, set[str]]:
    missing = {e: metric_names(e) - exported - EXTERNAL - defined for e in exprs}
    return {e: names for e, names in missing.items() if names}


def test_the_hpa_metric_is_a_gauge_on_a_live_coordinator(cpu: list[m.Obj], live: Scrape) -> None:
    hpa = m.one(cpu, "HorizontalPodAutoscaler", "coordinator")
    (name,) = [metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods"]
    assert live.coordinator.get(name) == "gauge", f"{name} is not a gauge the coordinator exports"
    assert re.search(rf"^{name} \d", live.coordinator_text, re.M), f"no {name} sample on /metrics"


def test_the_adapter_rule_serves_the_hpa_metric_per_pod(cpu: list[m.Obj], live: Scrape) -> None:
    hpa = m.one(cpu, "HorizontalPodAutoscaler", "coordinator")
    (name,) = [metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods"]
    (rule,) = m.load_yaml(ADAPTER_CONFIG)["rules"]
    assert metric_names(rule["seriesQuery"]) == {name}
    assert re.fullmatch(rule["name"]["matches"], name)
    assert re.sub(rule["name"]["matches"], rule["name"]["as"], name) == name
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
    assert "<<.GroupBy>>" in rule["metricsQuery"]


def test_the_adapter_config_ships_in_the_rendered_configmap(rendered: dict[str, list[m.Obj]]) -> None:
    (cm,) = rendered["prometheus-adapter"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["data"]["config.yaml"] == ADAPTER_CONFIG.read_text()


def test_every_alert_and_recording_rule_uses_exported_metrics(cpu: list[m.Obj], live: Scrape) -> None:
    rules = [r for g in m.one(cpu, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    assert unknown([r["expr"] for r in rules], live.everything, recorded) == {}
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert len(alerts) >= 8 and {"ShardsearchHighErrorRate", "ShardsearchSearchLatencyHigh", "ShardsearchShardDown",
                                 "ShardsearchReplicaFenced", "ShardsearchCacheDown"} <= alerts


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(metric, label) is Grafana's, not PromQL
            (metric,) = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["definition"]).groups()
            exprs.append(metric)
    return exprs


def test_every_dashboard_query_uses_exported_metrics(live: Scrape) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 20
    assert unknown(exprs, live.everything) == {}
    used = set().union(*(metric_names(e) for e in exprs))
    for topic in (  # what the operator guide promises the dashboard shows
        "shardsearch_coordinator_requests_total", "shardsearch_coordinator_request_duration_seconds_bucket",
        "shardsearch_coordinator_batch_size_bucket", "shardsearch_coordinator_batch_queue_duration_seconds_bucket",
        "shardsearch_coordinator_cache_lookups_total", "shardsearch_coordinator_shard_request_duration_seconds_bucket",
        "shardsearch_coordinator_shard_errors_total", "shardsearch_shard_vectors",
        "shardsearch_coordinator_shard_fenced_replicas", "shardsearch_shard_catch_ups_total",
    ):
        assert topic in used, f"the dashboard does not show {topic}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all(p.get("targets") for p in dashboard["panels"] if p["type"] != "row")


def test_metric_names_catches_a_misspelt_metric() -> None:
    exported = {"shardsearch_coordinator_requests_total"}
    assert unknown(['sum(rate(shardsearch_coordinator_requests_total{code!="OK"}[5m]))'], exported) == {}
    assert unknown(["sum(rate(shardsearch_coordinator_request_total[5m]))"], exported)
    with pytest.raises(ValueError):
        metric_names("sum(rat(shardsearch_coordinator_requests_total[5m]))")
