"""A load generator for any coordinator: closed or open loop, unary, batch or stream calls; QPS, latency, recall.

From Python, in-process: `result = await run_bench(BenchConfig(address=..., collection=..., dataset=...))`; the
`shardsearch bench` command (`bench.cli`) is a thin wrapper over it. Closed loop measures what the cluster sustains;
open loop offers a fixed arrival rate and measures latency from each request's scheduled send time, so queueing in
the client or the server is not hidden.
"""

from shardsearch.tools.bench.runner import BenchConfig, BenchResult, run_bench
from shardsearch.tools.bench.workload import Workload, read_dataset, read_workload

__all__ = ["BenchConfig", "BenchResult", "Workload", "read_dataset", "read_workload", "run_bench"]
