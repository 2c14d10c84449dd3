"""A whole cluster on one machine: N shard processes and one or more coordinators, each its own process, on free ports.

Used by `shardsearch local`, the integration tests and the benchmarks (the Redis and Triton servers it can run beside
it are in shardsearch/tools/sidecars.py). Children get SIGTERM if the launcher dies (they set PR_SET_PDEATHSIG themselves,
see shardsearch.process), so no orphans are left even after `kill -9` of the launcher.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shardsearch.process import DIE_WITH_PARENT_ENV, free_port
from shardsearch.tools.sidecars import (
    TRITON_DIM,
    TRITON_IMAGE_BYTES_MODEL,
    TRITON_IMAGE_MODEL,
    TRITON_TEXT_MODEL,
    RedisServer,
    TritonServer,
    find_redis_server,
)

__all__ = [
    "TRITON_DIM", "TRITON_IMAGE_BYTES_MODEL", "TRITON_IMAGE_MODEL", "TRITON_TEXT_MODEL", "CrashLoop", "LocalCluster",
    "Process", "RedisServer", "RestartPolicy", "TritonServer", "describe_exit", "find_redis_server", "free_port",
]


@dataclass
class Process:
    name: str
    args: list[str]
    log_path: Path
    port_file: Path
    popen: subprocess.Popen[bytes] | None = None
    port: int = 0
    metrics_port: int = -1
    probe_credentials: grpc.ChannelCredentials | None = None
    """For servers on TLS: how the health check dials them (with a client certificate under mutual TLS)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, env: dict[str, str]) -> None:
        self.port_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", *self.args, "--port-file", str(self.port_file)],
            stdout=log, stderr=subprocess.STDOUT, env={**env, DIE_WITH_PARENT_ENV: str(os.getpid())},
        )
        log.close()

    def wait_ready(self, deadline: float) -> None:
        """Waits for the port file, then for the gRPC health check to say SERVING."""
        assert self.popen is not None
        while not self.port_file.exists():
            self._check_alive(deadline)
            time.sleep(0.05)
        ports = json.loads(self.port_file.read_text())
        self.port, self.metrics_port = ports["grpc"], ports["metrics"]
        credentials = self.probe_credentials
        dial = grpc.secure_channel(self.address, credentials) if credentials else grpc.insecure_channel(self.address)
        with dial as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                self._check_alive(deadline)
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)

    def _check_alive(self, deadline: float) -> None:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; log:\n{self.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{self.name} not healthy in time; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class LocalCluster:
    shards: int = 2
    port: int = 0
    host: str = "127.0.0.1"
    run_dir: Path | None = None
    omp_threads: int = 1
    metrics: bool = False
    shard_args: Sequence[str] = ()
    coordinator_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    coordinators: int = 1
    durable: bool = True
    """Shards keep a write-ahead log and snapshots under run_dir/<shard>-data (so a restarted shard has its data)."""
    reuse_port: bool = False
    """With several coordinators: True binds them all to one port (SO_REUSEPORT), False gives each its own."""
    replicas: int = 1
    """Replica processes per shard (named shard-<i>-<r>), each told about its peers."""
    probe_credentials: grpc.ChannelCredentials | None = None
    """TLS credentials the readiness checks dial with, when the servers are started with TLS flags."""
    shard_procs: list[Process] = field(default_factory=list, init=False)
    _owns_data: bool = field(default=False, init=False)
    coordinator_procs: list[Process] = field(default_factory=list, init=False)

    def start(self, timeout: float = 60.0) -> "LocalCluster":
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="shardsearch-"))
            self._owns_data = True
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = self._env()
        metrics_port = "0" if self.metrics else "-1"
        try:
            for i in range(self.shards):
                # Replicas must know each other's addresses up front, so they get fixed free ports.
                ports = [free_port() for _ in range(self.replicas)] if self.replicas > 1 else [0]
                for r, port in enumerate(ports):
                    name = f"shard-{i}" if self.replicas == 1 else f"shard-{i}-{r}"
                    durability = ["--data-dir", str(self.run_dir / f"{name}-data")] if self.durable else []
                    peers = ",".join(f"127.0.0.1:{p}" for j, p in enumerate(ports) if j != r)
                    proc = self._process(name, [
                        "shardsearch.shard_server", "--host", "127.0.0.1", "--port", str(port), "--name", name,
                        "--metrics-port", metrics_port, "--omp-threads", str(self.omp_threads), *durability,
                        *(["--peers", peers] if peers else []), *self.shard_args,
                    ])
                    proc.start(env)
                    self.shard_procs.append(proc)
            deadline = time.monotonic() + timeout
            for proc in self.shard_procs:
                proc.wait_ready(deadline)
            self._start_coordinators(env, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_coordinators(self, env: dict[str, str], deadline: float) -> None:
        port = self.port
        metrics_port = "0" if self.metrics else "-1"
        for i in range(self.coordinators):
            name = "coordinator" if i == 0 else f"coordinator-{i}"
            proc = self._process(name, [
                "shardsearch.coordinator", "--host", self.host, "--port", str(port), "--metrics-port", metrics_port,
                "--shards", self.shard_list(), *(["--reuse-port"] if self.reuse_port else []),
                *self.coordinator_args,
            ])
            proc.start(env)
            self.coordinator_procs.append(proc)
            if self.reuse_port:  # the first one picks the port, the others join it
                proc.wait_ready(deadline)
                port = proc.port
        for proc in self.coordinator_procs:
            proc.wait_ready(deadline)

    def restart_coordinators(self, coordinator_args: Sequence[str], timeout: float = 60.0) -> None:
        """Replaces the coordinators with ones started with other flags (the shards and their data stay)."""
        old = self.coordinator_procs
        for proc in old:
            proc.stop()
        if self.reuse_port and old:
            self.port = old[0].port
        self.coordinator_procs = []
        self.coordinator_args = coordinator_args
        env = self._env()
        self._start_coordinators(env, time.monotonic() + timeout)

    def _process(self, name: str, args: list[str]) -> Process:
        assert self.run_dir is not None
        return Process(
            name, args, self.run_dir / f"{name}.log", self.run_dir / f"{name}.ports.json",
            probe_credentials=self.probe_credentials,
        )

    def shard_list(self) -> str:
        groups = [self.shard_procs[i : i + self.replicas] for i in range(0, len(self.shard_procs), self.replicas)]
        return ",".join(f"shard-{i}=" + "|".join(p.address for p in group) for i, group in enumerate(groups))

    def replica(self, shard: int, replica: int) -> Process:
        return self.shard_procs[shard * self.replicas + replica]

    @property
    def coordinator(self) -> Process | None:
        return self.coordinator_procs[0] if self.coordinator_procs else None

    @property
    def address(self) -> str:
        assert self.coordinator is not None
        return f"{self.host}:{self.coordinator.port}"

    @property
    def addresses(self) -> list[str]:
        return [f"{self.host}:{proc.port}" for proc in self.coordinator_procs]

    def restart_shard(self, index: int, timeout: float = 30.0) -> None:
        """Starts a stopped shard process (index into shard_procs) again on the same port, so the coordinator's
        address for it stays valid; returns once it serves (with peers: once it has caught up)."""
        self._restart(self.shard_procs[index], timeout)

    def _restart(self, proc: Process, timeout: float) -> None:
        proc.stop()
        if proc.port:  # the same port, so that every address for it (the coordinators', the peers') stays valid
            proc.args[proc.args.index("--port") + 1] = str(proc.port)
        proc.start(self._env())
        proc.wait_ready(time.monotonic() + timeout)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": str(self.omp_threads), **self.env}

    def supervise(self, stop: threading.Event, policy: "RestartPolicy | None" = None,
                  say: Callable[[str], None] = print) -> None:
        """Watches every process until `stop` is set: one that exits is reaped, logged and started again on the
        same port with the same data dir, after a backoff that doubles with each crash. A process that crashes
        more than `policy.max_restarts` times within `policy.window_s` raises CrashLoop with its log tail.

        Run it in the thread that started the cluster and outlives it (children die with the thread that forked
        them: PR_SET_PDEATHSIG)."""
        policy = policy or RestartPolicy()
        crashes: dict[str, list[float]] = {}
        while not stop.wait(policy.poll_s):
            for proc in self.coordinator_procs + self.shard_procs:
                code = proc.popen.poll() if proc.popen is not None else None
                if code is None:
                    continue
                now = time.monotonic()
                recent = [t for t in crashes.get(proc.name, []) if now - t < policy.window_s] + [now]
                crashes[proc.name] = recent
                if len(recent) > policy.max_restarts:
                    raise CrashLoop(proc, code, len(recent), policy.window_s)
                delay = min(policy.backoff_s * 2 ** (len(recent) - 1), policy.max_backoff_s)
                say(f"{proc.name} exited with {describe_exit(code)}; restarting it on port {proc.port or 'any'} "
                    f"in {delay:.1f}s (crash {len(recent)} of at most {policy.max_restarts} in "
                    f"{policy.window_s:.0f}s)")
                if stop.wait(delay):
                    return
                try:
                    self._restart(proc, policy.start_timeout_s)
                except (RuntimeError, TimeoutError) as exc:
                    say(f"{proc.name} did not come back: {str(exc).splitlines()[0]}")
                    continue  # counted when it is seen dead again
                say(f"{proc.name} restarted (pid {proc.popen.pid if proc.popen else '?'}), serving on {proc.address}")

    def start_extra_shard(self, name: str, timeout: float = 30.0) -> Process:
        """Starts one more shard process that no coordinator knows yet (to add to the ring with `admin add-shard`);
        it is stopped with the cluster."""
        assert self.run_dir is not None
        durability = ["--data-dir", str(self.run_dir / f"{name}-data")] if self.durable else []
        proc = self._process(name, [
            "shardsearch.shard_server", "--host", "127.0.0.1", "--port", "0", "--name", name,
            "--metrics-port", "0" if self.metrics else "-1", "--omp-threads", str(self.omp_threads), *durability,
            *self.shard_args,
        ])
        proc.start(self._env())
        self.shard_procs.append(proc)
        proc.wait_ready(time.monotonic() + timeout)
        return proc

    def stop(self) -> None:
        """Stops every process; shard data in a temporary run dir is deleted (the logs stay for post-mortems)."""
        procs = self.coordinator_procs + self.shard_procs
        for proc in procs:
            proc.signal(signal.SIGTERM)
        for proc in procs:
            proc.stop()
        if self._owns_data and self.run_dir is not None:
            for data in self.run_dir.glob("*-data"):
                shutil.rmtree(data, ignore_errors=True)

    def logs(self) -> str:
        procs = self.coordinator_procs + self.shard_procs
        return "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in procs)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class RestartPolicy:
    """How `LocalCluster.supervise` restarts processes that exit."""

    max_restarts: int = 5
    """Crashes of one process tolerated within window_s; one more and the launcher gives up."""
    window_s: float = 60.0
    backoff_s: float = 0.5
    """Wait before the first restart; it doubles with each crash in the window."""
    max_backoff_s: float = 10.0
    poll_s: float = 0.2
    start_timeout_s: float = 60.0


class CrashLoop(RuntimeError):
    """A supervised process crashed too often: the launcher stops and exits non-zero with the process's log tail."""

    def __init__(self, proc: Process, code: int, crashes: int, window_s: float) -> None:
        super().__init__(
            f"{proc.name} exited with {describe_exit(code)}, its crash {crashes} within {window_s:.0f}s: giving up. "
            f"Last lines of {proc.log_path}:\n{proc.log_tail()}"
        )


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"code {code}"
