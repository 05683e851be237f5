"""GPU placement: each warm child sees exactly one device (``CUDA_VISIBLE_DEVICES``).

``GpuPool`` is a ``LongRunningPool`` whose next child always goes to the device with the
fewest live children, so children are spread evenly and a child that is replaced (crash,
timeout, memory, recycling) is replaced on the device it left. ``nvidia-smi`` is asked for
the devices (``gpus: all``) once at start, and for their memory every ``MEMORY_INTERVAL``
seconds in a subprocess the event loop awaits, killed after ``QUERY_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from typing import Any

from agent.runtime.loop import PeriodicLoop
from agent.supervisor.launch import ChildSpec, StartupCommandError
from agent.supervisor.long_running import LongRunningPool

log = logging.getLogger("agent.supervisor")

QUERY_TIMEOUT = 2.0  #: seconds an nvidia-smi call may take before it is killed
DETECT_TIMEOUT = 10.0  #: seconds for ``nvidia-smi -L`` at start
MEMORY_INTERVAL = 5.0  #: seconds between two memory samples
MEMORY_QUERY = ("--query-gpu=index,memory.used,memory.total", "--format=csv,noheader,nounits")
_LIST_LINE = re.compile(r"^GPU (\d+):")


class GpuError(StartupCommandError):
    """The GPUs cannot be found (``gpus: all`` without a working nvidia-smi)."""


def detect_gpus(timeout: float = DETECT_TIMEOUT) -> list[int]:
    """The device indices ``nvidia-smi -L`` lists; ``GpuError`` saying why when it cannot."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise GpuError("deployment.gpus is all, but nvidia-smi is not on PATH: list the devices "
                       "(gpus: [0, 1]) or install the NVIDIA driver tools")
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GpuError(f"deployment.gpus is all, but nvidia-smi -L did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise GpuError(f"deployment.gpus is all, but nvidia-smi -L could not run: {exc}") from None
    found = [int(m.group(1)) for line in done.stdout.splitlines() if (m := _LIST_LINE.match(line.strip()))]
    if done.returncode != 0 or not found:
        detail = (done.stderr.strip() or done.stdout.strip())[:200] or f"exit code {done.returncode}"
        raise GpuError(f"deployment.gpus is all, but nvidia-smi -L listed no GPU ({detail})")
    return sorted(set(found))


def parse_memory(text: str) -> dict[str, dict[str, int]]:
    """``0, 1024, 40960`` lines (MiB) -> {"0": {"used_bytes", "total_bytes"}}; bad lines skipped."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            continue
        out[parts[0]] = {"used_bytes": int(parts[1]) << 20, "total_bytes": int(parts[2]) << 20}
    return out


class GpuMemory(PeriodicLoop):
    """The devices' memory, sampled in the background (None until a sample succeeded)."""

    name = "gpu-memory"

    def __init__(self, interval: float = MEMORY_INTERVAL, timeout: float = QUERY_TIMEOUT) -> None:
        super().__init__()
        self.interval, self.timeout = interval, timeout
        self.tick_timeout = timeout + 1.0  # a sample kills nvidia-smi after ``timeout`` itself
        self.devices: dict[str, dict[str, int]] | None = None
        self.sampled_at: float | None = None
        self.error: str | None = None

    def start(self) -> None:
        """Once for every GPU pool sharing it, and only where nvidia-smi is installed."""
        if self._task is None and shutil.which("nvidia-smi") is not None:
            super().start()

    async def tick(self) -> None:
        await self.sample()

    async def sample(self) -> None:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            self.error = "nvidia-smi is not on PATH"
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                exe, *MEMORY_QUERY, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self.error = f"nvidia-smi could not run: {exc}"
            return
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError):
                import os

                os.killpg(proc.pid, signal.SIGKILL)  # it and anything it started
            await proc.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.error = f"nvidia-smi did not answer within {self.timeout:g}s (killed)"
            return
        devices = parse_memory(out.decode(errors="replace"))
        if proc.returncode != 0 or not devices:
            self.error = f"nvidia-smi gave no memory figures (exit code {proc.returncode})"
            return
        self.devices, self.sampled_at, self.error = devices, time.time(), None


class GpuPool(LongRunningPool):
    """Warm children placed on ``devices`` (``processes`` of them; see the module docstring)."""

    def __init__(self, spec: ChildSpec, devices: list[str], processes: int, *,
                 memory: GpuMemory | None = None, **kwargs: Any) -> None:
        if not devices:
            raise ValueError(f"queue {spec.queue!r}: GPU placement needs at least one device")
        super().__init__(spec, processes, **kwargs)
        self.devices = list(devices)
        self.memory = memory or GpuMemory()

    def _child_spec(self) -> ChildSpec:
        placed = {device: 0 for device in self.devices}
        for child in self._children:
            if child.spec.gpu in placed and not child.retired.is_set() and child.exit is None:
                placed[child.spec.gpu] += 1
        device = min(self.devices, key=lambda d: placed[d])  # ties: the first listed
        return replace(self.spec, gpu=device)

    async def start(self) -> None:
        await super().start()
        self.memory.start()

    async def stop(self, grace: float | None = None) -> None:
        await self.memory.stop()
        await super().stop(grace)

    def gpu_status(self) -> dict[str, Any]:
        """Per device: the pids of its children and its memory (when nvidia-smi answers)."""
        memory = self.memory.devices or {}
        out: dict[str, Any] = {}
        for device in self.devices:
            pids = sorted(c.pid for c in self._children if c.spec.gpu == device and c.pid)
            out[device] = {"children": pids, **memory.get(device, {})}
        return {"devices": out, "memory_sampled_at": self.memory.sampled_at,
                "memory_error": self.memory.error}
