"""OpsPlane: the agent's HTTP endpoints, metrics and queue sampler, started together."""

from __future__ import annotations

import psutil

from agent.config.model import OpsConfig
from agent.ops.http import OpsServer, build_app
from agent.ops.metrics import Metrics, SampledCollector
from agent.ops.sampler import QueueSampler
from agent.runtime.agent import Agent
from agent.runtime.lifecycle import State


class OpsPlane:
    def __init__(self, agent: Agent, config: OpsConfig, metrics: Metrics) -> None:
        self.agent = agent
        self.metrics = metrics
        # no sampling before Redis first let the agent in (each tick would log the same failure)
        self.sampler = QueueSampler(agent.broker,
                                    lambda: list(agent.settings.weights) if agent.redis_ok else [])
        self.metrics.registry.register(SampledCollector(self.sample))
        self._process = psutil.Process()
        controls = None
        if config.enable_controls:
            controls = {"drain": self._drain, "resume": self._resume}
        app = build_app(health=agent.health, ready=agent.readiness, status=self.status,
                        registry=self.metrics.registry,
                        token=config.token.reveal() if config.token else None, controls=controls)
        self.server = OpsServer(app, config.listen or "127.0.0.1:0")

    def _drain(self) -> str:
        self.agent.pause()
        return str(self.agent.lifecycle.state)

    def _resume(self) -> str:
        self.agent.resume()
        return str(self.agent.lifecycle.state)

    def status(self) -> dict:
        data = self.agent.status()
        for queue, sample in self.sampler.samples.items():
            if queue in data["queues"]:
                entry = data["queues"][queue]
                entry.update(sample)
                if "flow" in entry:  # how long the head task has waited (for a token or a slot)
                    entry["flow"]["head_wait_seconds"] = sample.get("latency")
        return data

    def sample(self) -> dict:
        agent = self.agent
        executors = {}
        for name, ex in agent.pools().items():
            executors[name] = {"children": ex.status(), "restarts": getattr(ex, "restarts", 0),
                               **({"batches": ex.batches.status()}
                                  if getattr(ex, "batches", None) is not None and ex.batches.specs else {})}
        return {
            "running": agent.capacity.running,
            "slots": agent.slots,
            "queues": self.sampler.samples,
            "executors": executors,
            "leases": {"extensions": agent.leases.extensions},
            "flow": agent.processor.flow,
            "aggregation": agent.aggregator.status() if agent.aggregator is not None else {},
            "rss": self._process.memory_info().rss,
            "ready": agent.lifecycle.state == State.READY,
        }

    async def start(self) -> None:
        await self.server.start()
        self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()
        await self.server.stop()
