"""The composition root: config -> (register, deploy) -> children -> Agent + ops plane.

``run(config)`` is what ``rundown-agent -config FILE`` calls.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from agent.bootstrap.models import Deployment, DeploymentSpec, RedisConnection
from agent.config import Config
from agent.config.flow import FlowLimits
from agent.runtime.agent import Agent, AgentSettings, parent_queue
from agent.runtime.placement import gpu_pool, labelled_weights
from agent.runtime.progress import ProgressBoard
from agent.runtime.redis_auth import RedisAuth, RedisAuthRejected
from agent.supervisor import Capacity, ChildSpec, build_child_env, create_pool, resolve_argv

log = logging.getLogger("agent.runtime")


@dataclass
class Plan:
    """Everything the agent needs, resolved from the config (and the control server)."""

    redis: RedisConnection
    weights: dict[str, int]
    limits: dict[str, int]
    specs: dict[str, DeploymentSpec]  # by parent queue
    flow: dict[str, FlowLimits] = field(default_factory=dict)  # fleet-wide limits by queue
    schedule: tuple = ()  # periodic tasks handed out by the control server
    aggregation: dict[str, Any] = field(default_factory=dict)  # the control server's, by queue


def local_plan(config: Config) -> Plan:
    """Local mode: Redis and the deployment come from the config file."""
    rc = config.redis
    assert rc is not None
    kwargs = rc.connection_kwargs()
    redis = RedisConnection(
        url=rc.connection_url(), password=rc.password,
        tls_files={k: v for k, v in kwargs.items() if k.startswith("ssl_")})
    queues = config.worker.queues or ()
    weights = labelled_weights(config, {q.name: q.weight for q in queues} or {"default": 1})
    limits = {q.name: q.concurrency for q in queues if q.concurrency}
    specs = {parent: DeploymentSpec.from_config(config.deployment, parent)
             for parent in {parent_queue(q) for q in weights}}
    return Plan(redis, weights, limits, specs, {q.name: q.flow for q in queues if q.flow})


async def server_plan(config: Config) -> Plan:
    """Server mode: register every parent queue with the control server."""
    from agent.bootstrap.register import register

    registration = await register(config)  # it logs its warnings
    limits = {q.name: q.concurrency for q in config.worker.queues if q.concurrency}
    return Plan(registration.redis, dict(registration.queues), limits, dict(registration.deployments),
                flow_limits(registration.queues, registration.flow, config.worker.queues),
                schedule=tuple({e.id: e for reg in registration.parents.values()
                                for e in reg.schedule}.values()),
                aggregation=registration.aggregation)


def flow_limits(queues, served: dict[str, FlowLimits], configured) -> dict[str, FlowLimits]:
    """Each queue's flow limits: the control server's (the same for the whole fleet), then
    the agent config's for that queue or its parent where the server sets none."""
    mine = {q.name: q.flow for q in configured if q.flow}
    out = {}
    for queue in queues:
        lim = served.get(queue, FlowLimits()).merged(
            mine.get(queue, FlowLimits())).merged(mine.get(parent_queue(queue), FlowLimits()))
        if lim:
            out[queue] = lim
    return out


def redis_auth(config: Config, plan: Plan) -> RedisAuth:
    """What a rejected Redis login leads to: in server mode, registering again (the control
    server may have rotated the password); in local mode, an exit naming the key to fix."""
    if config.local_mode:
        rc = config.redis
        assert rc is not None
        url_password = bool(rc.url and urlsplit(rc.url).password)
        key = ("redis.password" if rc.password else "the password in redis.url" if url_password
               else "redis.url" if rc.url else "redis.addr")
        return RedisAuth.local(plan.redis.url, key, bool(rc.password) or url_password)

    async def register_again() -> RedisConnection:
        from agent.bootstrap.register import register

        return (await register(config)).redis

    return RedisAuth.from_server(plan.redis, config.server.url or "", register_again,
                                 config.server.redis_auth_attempts)


async def deploy_all(config: Config, specs: dict[str, DeploymentSpec]) -> dict[str, Deployment]:
    from agent.bootstrap.deploy import deploy

    out = {}
    # queues whose specs are the same but for the queue deploy once and share the Deployment
    done: list[tuple[DeploymentSpec, Deployment]] = []
    for parent, spec in specs.items():
        same = replace(spec, queue="")
        found = next((d for s, d in done if s == same), None)
        if found is not None:
            out[parent] = found
            continue
        out[parent] = d = await asyncio.to_thread(deploy, spec, config.deployment.dir, config.git)
        done.append((same, d))
        log.info("queue %s: code at %s (commit %s), %s", parent, d.code_dir, d.commit[:12] or "-",
                 "dependencies installed" if d.installed else "dependencies up to date")
    return out


def build_pools(config: Config, plan: Plan, deployments: dict[str, Deployment],
                capacity: Capacity, progress: ProgressBoard | None = None) -> dict:
    """One pool per deployment: parent queues whose specs are the same (``deploy_all`` gave
    them one ``Deployment``) share its children, so 2,000 queues cost no more processes than
    one. Returns the pool of each parent queue."""
    pools: dict[str, Any] = {}
    shared: dict[int, Any] = {}  # id(Deployment) -> its pool
    worker, deployment = config.worker, config.deployment
    for parent, spec in plan.specs.items():
        dep = deployments[parent]
        key = id(dep)
        if key in shared:
            pools[parent] = shared[key]
            continue
        env = build_child_env(spec.env_vars, spec.secrets, dep.venv_dir)
        child = ChildSpec(
            argv=resolve_argv(spec.startup_cmd, dep.venv_dir), cwd=dep.code_dir, env=env,
            startup_timeout=spec.startup_timeout, threads=deployment.threads,
            async_limit=deployment.async_limit or worker.concurrency, prefetch=worker.prefetch,
            max_tasks_per_child=worker.max_tasks_per_child,
            max_memory_bytes=worker.max_memory_per_child, queue=parent,
            rlimit_as_bytes=deployment.one_shot_memory_limit,
            rlimit_cpu_seconds=deployment.one_shot_cpu_seconds,
            on_progress=progress.report if progress is not None else None)
        pools[parent] = shared[key] = gpu_pool(config, child, spec.mode, capacity) or create_pool(
            child, mode=spec.mode, processes=spec.processes, capacity=capacity,
            target_slots=worker.concurrency, one_shot_start=deployment.one_shot_start,
            one_shot_load=deployment.one_shot_load)
    return pools


def add_background_loops(agent: Agent, config: Config, plan: Plan) -> None:
    """The scheduler of periodic tasks and the workflow recovery loop, beside the agent's own."""
    from agent.scheduler import Scheduler
    from agent.workflows.recovery import WorkflowRecovery

    agent.loops.append(WorkflowRecovery(agent.redis))
    entries = {e.id: e for e in [*config.schedule, *plan.schedule]}  # the same entry once
    if entries:
        agent.loops.append(Scheduler(agent.redis, list(entries.values())))


async def serve(config: Config) -> int:
    plan = local_plan(config) if config.local_mode else await server_plan(config)
    deployments = await deploy_all(config, plan.specs)
    capacity = Capacity(config.worker.concurrency)
    progress = ProgressBoard()
    pools = build_pools(config, plan, deployments, capacity, progress)
    settings = AgentSettings(
        redis_url=plan.redis.url, redis_kwargs=plan.redis.kwargs, weights=plan.weights,
        limits=plan.limits, flow=plan.flow, concurrency=config.worker.concurrency,
        strict_priority=config.worker.strict_priority,
        shutdown_timeout=config.worker.shutdown_timeout)
    from agent.ops.metrics import Metrics
    from agent.ops.service import OpsPlane

    metrics = Metrics()
    from agent.workflows.hook import WorkflowObserver

    observer = WorkflowObserver(metrics)  # moves a workflow on once its step's outcome is written
    agent = Agent(settings, pools, observer=observer, capacity=capacity, auth=redis_auth(config, plan),
                  progress=progress)
    add_background_loops(agent, config, plan)
    observer.attach(agent.redis)
    from agent.runtime.aggregator import add_aggregator

    add_aggregator(agent, config, pools, plan.aggregation)  # asynq group aggregation, where configured
    ops = OpsPlane(agent, config.ops, metrics) if config.ops.listen else None
    if ops is not None:
        await ops.start()
    try:
        return await agent.run()
    finally:
        ignore_stop_signals()  # the drain is over: a late SIGTERM must not kill the exit
        if ops is not None:
            await ops.stop()


def ignore_stop_signals() -> None:
    """From now on SIGTERM and SIGINT are ignored (the event loop's handlers would be reset to
    the default, death by signal, when the loop closes)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


def run(config: Config) -> int:
    """Run the agent until it is stopped; returns the process exit code."""
    from agent.bootstrap.errors import BootstrapError
    from agent.supervisor import ChildStartupError, StartupCommandError

    try:
        return asyncio.run(serve(config))
    except RedisAuthRejected as exc:
        log.error("giving up: %s (exit code %d)", exc, exc.exit_code)
        return exc.exit_code
    except BootstrapError as exc:
        log.error("bootstrap failed: %s", exc)
        return 1
    except (ChildStartupError, StartupCommandError) as exc:
        log.error("task code could not start: %s", exc)
        return 1
