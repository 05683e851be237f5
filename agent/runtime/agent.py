"""Agent: wires the broker, the processor, the executors and the background loops, and
runs the lifecycle (starting -> ready -> draining -> stopped) with signal handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from agent.broker import Broker, connection
from agent.broker.credentials import is_auth_error
from agent.broker.flow import FlowControl, FlowLimits, publish_limits
from agent.runtime.cancel import CancelListener
from agent.runtime.forwarder import Forwarder
from agent.runtime.heartbeat import Heartbeat, Identity
from agent.runtime.janitor import Janitor
from agent.runtime.leases import LOOP_STALL_SECONDS, LeaseKeeper
from agent.runtime.lifecycle import Lifecycle, State
from agent.runtime.processor import Observer, Processor
from agent.runtime.progress import ProgressBoard
from agent.runtime.reconciler import Reconciler
from agent.runtime.recoverer import Recoverer
from agent.runtime.redis_auth import RedisAuth
from agent.runtime.wakeup import QueueWaiters, WorkSignal
from agent.supervisor.health import Capacity
from agent.supervisor.outcome import Executor
from agent.supervisor.reaper import Reaper, process_marks

log = logging.getLogger("agent.runtime")


class StopRequested(Exception):
    """A stop signal arrived before the agent was ready."""


@dataclass
class AgentSettings:
    redis_url: str
    redis_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"default": 1})
    limits: dict[str, int] = field(default_factory=dict)
    flow: dict[str, FlowLimits] = field(default_factory=dict)  #: fleet-wide limits by queue
    concurrency: int = 10
    strict_priority: bool = False
    shutdown_timeout: float = 8.0
    socket_timeout: float = 10.0


def parent_queue(queue: str) -> str:
    """``inference.high`` -> ``inference``: sub-queues share their parent's executor."""
    return queue.split(".", 1)[0]


class Agent:
    def __init__(self, settings: AgentSettings, executors: Mapping[str, Executor],
                 observer: Observer | None = None, capacity: Capacity | None = None,
                 auth: RedisAuth | None = None, progress: ProgressBoard | None = None) -> None:
        self.settings = settings
        # what a rejected Redis login leads to (default: give up at once, as in local mode)
        self.auth = auth or RedisAuth(settings.redis_url, "the configuration",
                                      "correct the Redis password and start the agent again")
        self.executors = dict(executors)  # by parent queue; queues of one deployment share one
        self.capacity = capacity or Capacity(settings.concurrency)
        by_id: dict[int, tuple[list[str], Executor]] = {}  # each executor once, with its queues
        for name, executor in self.executors.items():
            by_id.setdefault(id(executor), ([], executor))[0].append(name)
        self._pools = {",".join(names): executor for names, executor in by_id.values()}
        self.observer = observer or Observer()
        self.lifecycle = Lifecycle()
        self.identity = Identity()
        self.hurry = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self.loop_tick = time.monotonic()
        self.redis_ok = False
        self.requeued_at_shutdown = 0
        self._processor_task: asyncio.Task | None = None
        self._ticker: asyncio.Task | None = None
        # kills every process our children started if we die, SIGKILL included
        self.reaper = Reaper(process_marks().token)

        # redis.asyncio clients take redis.asyncio.retry.Retry (a sync Retry is converted, with a
        # warning); the lease thread's blocking client takes redis.retry.Retry.
        common = dict(socket_timeout=settings.socket_timeout, socket_connect_timeout=5.0,
                      health_check_interval=15, **self.auth.client_kwargs(settings.redis_kwargs))
        self._probe_kwargs = {**common, "retry": AsyncRetry(NoBackoff(), 0)}
        retry = AsyncRetry(ExponentialBackoff(cap=2.0, base=0.1), 3)
        # Standalone, TLS, Cluster or Sentinel, as the URL says (agent/broker/connection.py).
        self.redis = connection.async_client(settings.redis_url, retry=retry, **common)
        # Blocking waits need a socket timeout above their own block time.
        self.waiter_redis = connection.async_client(settings.redis_url, retry=retry, **common)
        # The lease thread renews every few seconds on its own: a call must fail fast rather than
        # retry inside redis-py, whose nested retries (command x reconnect x health check) held
        # a renewal for minutes on a stalled network, long past the 30 s lease.
        lease_timeout = min(settings.socket_timeout, 3.0)  # three tries within a 10 s lease
        self.lease_redis = connection.sync_client(settings.redis_url, **{
            **common, "retry": Retry(NoBackoff(), 0), "health_check_interval": 0,
            "socket_timeout": lease_timeout, "socket_connect_timeout": lease_timeout})
        self.broker = Broker(self.redis)

        self.signal = WorkSignal()
        self.waiters = QueueWaiters(self.waiter_redis, self.signal)
        self.leases = LeaseKeeper(self.lease_redis, loop_alive=self._loop_ticking)
        self.processor = Processor(
            self.broker, settings.weights, concurrency=settings.concurrency, limits=settings.limits,
            strict=settings.strict_priority, executor_for=self.executor_for, leases=self.leases,
            signal=self.signal, waiters=self.waiters, observer=self.observer,
            capacity=self.capacity, flow=FlowControl(settings.flow))
        queues = lambda: self.processor.queues  # noqa: E731
        self.forwarder = Forwarder(self.broker, queues)
        self.recoverer = Recoverer(self.broker, queues)
        self.janitor = Janitor(self.broker, queues)
        self.reconciler = Reconciler(self.broker, queues)
        self.heartbeat = Heartbeat(self.broker, self.identity, settings.weights, settings.concurrency,
                                   settings.strict_priority, lambda: self.lifecycle.asynq_status,
                                   self.processor.running_tasks)
        self.cancels = CancelListener(self.redis, self.processor.cancel)
        self.progress = progress or ProgressBoard()  # ctx.progress() reports, written to Redis
        self.progress.attach(self.redis, self._holds)
        self.loops = [self.heartbeat, self.forwarder, self.recoverer, self.janitor, self.reconciler]
        self.aggregator: Any = None  # asynq group aggregation (runtime/aggregator.py), when configured
        self._loop = asyncio.get_running_loop()
        self.leases.on_lost = lambda task: self._loop.call_soon_threadsafe(self.processor.abandon, task)

    def _holds(self, task_id: str) -> bool:
        """This agent holds the task and may still write for it (lease not lost)."""
        entry = self.processor.in_flight.get(task_id)
        return entry is not None and not entry.interrupted

    def executor_for(self, queue: str) -> Executor:
        return self.executors[parent_queue(queue)]

    def pools(self) -> dict[str, Executor]:
        """Each distinct executor once, named by the parent queues it serves."""
        return self._pools

    @property
    def slots(self) -> int:
        """Handlers that can run at once: ``worker.concurrency``, or fewer when the pools'
        children offer fewer slots (what the heartbeat and /status report)."""
        total = 0
        for executor in self.pools().values():
            slots = getattr(executor, "slots", None)
            if slots is None:
                return self.settings.concurrency
            total += slots
        return min(self.settings.concurrency, total) if total else self.settings.concurrency

    def _loop_alive(self) -> bool:
        return time.monotonic() - self.loop_tick < 20.0

    def _loop_ticking(self) -> bool:
        """The lease keeper renews only while the event loop ticked within LOOP_STALL_SECONDS
        (below the lease), so a wedged agent loses its tasks to recovery."""
        return time.monotonic() - self.loop_tick < LOOP_STALL_SECONDS

    async def _tick(self) -> None:
        while True:
            self.loop_tick = time.monotonic()
            await asyncio.sleep(1.0)

    # -- lifecycle ----------------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stop_requested.is_set():
            log.warning("second stop signal: cutting the drain short (in-flight tasks are requeued)")
            self.hurry.set()
        else:
            log.info("stop requested: draining")
            self._stop_requested.set()

    def pause(self) -> None:
        """Stop taking new tasks (SIGTSTP / ops drain); running tasks continue."""
        if self.lifecycle.move(State.PAUSED):
            self.processor.stop_fetching()

    def resume(self) -> None:
        if self.lifecycle.move(State.READY):
            self.processor.fetching = True
            self._processor_task = asyncio.create_task(self.processor.run(), name="processor")

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGTSTP, self.pause)

    async def connect(self, attempts: int = 0) -> None:
        """Wait for Redis (with backoff); ``attempts`` = 0 means keep trying until stopped.
        A rejected login is not retried like an outage: ``self.auth`` decides (redis_auth.py)."""
        delay, n = 0.2, 0
        while True:
            n += 1
            try:
                await self._ping_once()
                self.auth.accepted()
                self.redis_ok = True
                return
            except (redis.RedisError, OSError) as exc:
                if is_auth_error(exc):
                    if not await self.auth.rejected(exc, self._stop_within):
                        raise StopRequested from exc
                    continue
                if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
                    raise
                if attempts and n >= attempts:
                    raise
                log.warning("Redis not reachable at start-up (%s); retrying in %.1fs", exc, delay)
                if await self._stop_within(delay):
                    raise StopRequested from exc
                delay = min(delay * 2, 5.0)

    async def _ping_once(self) -> None:
        """PING through a client that does not retry inside redis-py, which would retry a
        rejected login (a ConnectionError there) before we could tell the reason."""
        probe = connection.async_client(self.settings.redis_url, **self._probe_kwargs)
        try:
            await probe.ping()
        finally:
            await probe.aclose()

    async def _stop_within(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True when a stop was requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        return self._stop_requested.is_set()

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="loop-tick")
        await self.connect()
        # Register our queues so `asynq stats` and the Inspector show them before any enqueue.
        await self.broker.register_queues(self.processor.queues)
        await publish_limits(self.redis, self.settings.flow)  # for inspect stats
        await asyncio.to_thread(self.reaper.start)
        for name, executor in self.pools().items():
            log.info("starting the task processes for queue %s", name)
            await executor.start()
        slots = self.slots
        self.heartbeat.concurrency = slots
        if slots < self.settings.concurrency:
            log.warning("worker.concurrency is %d but the children offer %d handler slots: at most "
                        "%d handlers run at once; set deployment.processes: auto, more processes "
                        "or deployment.threads, or lower worker.concurrency",
                        self.settings.concurrency, slots, slots)
        self.leases.start()
        for loop in self.loops:
            loop.start()
        self.cancels.start()
        self._processor_task = asyncio.create_task(self.processor.run(), name="processor")
        self.lifecycle.move(State.READY)
        queues = self.settings.weights
        shown = queues if len(queues) <= 20 else f"{len(queues)} queues"
        log.info("ready: queues %s, %d handlers at once%s", shown, slots,
                 ", strict priority" if self.settings.strict_priority else "")

    async def wait_for_stop(self) -> None:
        await self._stop_requested.wait()

    async def shutdown(self) -> None:
        self.lifecycle.move(State.DRAINING)
        self.requeued_at_shutdown = await self.processor.drain(self.settings.shutdown_timeout, self.hurry)
        if self.requeued_at_shutdown:
            log.warning("requeued %d unfinished task(s)", self.requeued_at_shutdown)
        if self._processor_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._processor_task, 1.0)
        await self.waiters.stop()
        await self.cancels.stop()
        for loop in self.loops:
            await loop.stop()
        self.leases.stop()
        for name, executor in self.pools().items():
            try:
                await executor.stop(grace=0.5)  # drained: nothing should be left running
            except Exception as exc:  # noqa: BLE001
                log.warning("stopping the task processes of %s: %s", name, exc)
        if self.reaper.alive():
            await asyncio.to_thread(self.reaper.stop)  # and whatever they left behind
        try:
            if self.redis_ok:  # nothing was written before Redis first answered
                await self.heartbeat.clear()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("could not remove heartbeat keys (they expire in 10s): %s", exc)
        self.lifecycle.move(State.STOPPED)
        if self._ticker is not None:
            self._ticker.cancel()
        await self.redis.aclose()
        await self.waiter_redis.aclose()
        self.lease_redis.close()

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, drain, stop. Returns the exit code."""
        self.install_signal_handlers()
        starting = asyncio.ensure_future(self.start())
        stop = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait([starting, stop], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # SIGTERM during start-up (a long @load): stop at once
            log.info("stop requested during start-up")
            starting.cancel()
        stop.cancel()
        try:
            await starting
        except (StopRequested, asyncio.CancelledError):
            await self.shutdown()
            return 0
        except Exception:
            if not self.redis_ok:  # gave up before Redis let us in (nothing else started)
                await self.shutdown()
            raise
        await self.wait_for_stop()
        await self.shutdown()
        log.info("stopped")
        return 0

    # -- observability ------------------------------------------------------------------

    def health(self) -> tuple[bool, dict]:
        """Alive: the event loop ticks and the processor has not died."""
        problems = []
        if not self._loop_alive():
            problems.append("event loop unresponsive")
        task = self._processor_task
        if task is not None and task.done() and self.lifecycle.state == State.READY:
            problems.append("processor stopped unexpectedly")
        return not problems, {"state": str(self.lifecycle.state), "problems": problems}

    async def readiness(self) -> tuple[bool, list[str]]:
        """Ready: state ready, Redis answers, a dequeue succeeded recently, executors healthy."""
        reasons = []
        if self.lifecycle.state != State.READY:
            reasons.append(f"state is {self.lifecycle.state}")
        if self.auth.problem is not None:
            reasons.append(self.auth.problem)  # known: no need to be rejected once more
        else:
            try:
                await asyncio.wait_for(self.redis.ping(), 0.5)  # refused at once, retried inside
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                reasons.append(self.auth.rejection_text(exc)
                               if is_auth_error(exc) else f"redis unreachable: {type(exc).__name__}")
        if self.processor.loop_error:
            reasons.append(f"task fetching is failing: {self.processor.loop_error}")
        if self.lifecycle.state == State.READY and time.monotonic() - self.processor.last_dequeue_ok > 10:
            reasons.append("no successful dequeue in the last 10s")
        for name, executor in self.pools().items():
            if not executor.healthy:
                reasons.append(f"queue {name}: task processes unhealthy")
        return not reasons, reasons

    def status(self) -> dict:
        now = time.time()
        proc = self.processor
        running = {t.id for t in proc.running_tasks()}
        return {
            "state": str(self.lifecycle.state),
            "state_since": self.lifecycle.since,
            "server": {"host": self.identity.host, "pid": self.identity.pid,
                       "server_id": self.identity.server_id, "started": self.identity.started},
            "concurrency": self.settings.concurrency,
            "slots": self.slots,
            "running": self.capacity.running,
            "strict_priority": self.settings.strict_priority,
            "redis": {"target": connection.describe(self.settings.redis_url),
                      "auth_error": self.auth.problem},
            "queues": {q: {"weight": w, "limit": self.settings.limits.get(q),
                           "in_flight": proc.per_queue.get(q, 0), "paused": q in proc.paused,
                           **({"flow": proc.flow.status(q)} if proc.flow and q in proc.flow.limits else {})}
                       for q, w in self.settings.weights.items()},
            "executors": {name: {"healthy": ex.healthy, "children": ex.status(),
                                 **({"gpus": ex.gpu_status()} if hasattr(ex, "gpu_status") else {}),
                                 **_batches(ex)}
                          for name, ex in self.pools().items()},
            "aggregation": self.aggregator.status() if self.aggregator is not None else {},
            "in_flight": [{"id": t.id, "queue": t.queue,
                           "type": t.message.type if t.message else "",
                           "running": t.id in running,
                           "age_seconds": round(now - t.started_at, 3),
                           "progress": self.progress.get(t.id)}
                          for t in (e.task for e in list(proc.in_flight.values()))],
            "leases": {"extensions": self.leases.extensions, "losses": self.leases.losses,
                       "errors": self.leases.errors},
            "requeued_at_shutdown": self.requeued_at_shutdown,
        }


def _batches(executor: Any) -> dict[str, Any]:
    """``batches``: a pool's batched types and the batches being collected (batches.py)."""
    batches = getattr(executor, "batches", None)
    return {"batches": batches.status()} if batches is not None and batches.specs else {}
