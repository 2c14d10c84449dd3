"""The shard's metrics: its RPCs (shardsearch.metrics.RpcMetrics), live vectors and memory by collection."""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shardsearch.metrics import RpcMetrics
from shardsearch.shard_server.index import Collection


class ShardMetrics(RpcMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "shardsearch_shard")
        self.vectors = Gauge(
            "shardsearch_shard_vectors", "Live vectors held by this shard, by collection.", ["collection"],
            registry=registry,
        )
        self.collections: Callable[[], list[Collection]] = lambda: []
        registry.register(_MemoryCollector(self))


class _MemoryCollector(Collector):
    """shardsearch_shard_memory_bytes{collection, part}: each collection's own estimate of what it holds."""

    def __init__(self, metrics: ShardMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "shardsearch_shard_memory_bytes",
            "Bytes a collection holds on this shard, by part (vectors, index, ids, columns, payloads, fields, "
            "markers): estimated from sizes, beside process_resident_memory_bytes.", labels=["collection", "part"])
        for coll in self._metrics.collections():
            for part, size in coll.memory().items():
                family.add_metric([coll.spec.name, part], size)
        yield family


