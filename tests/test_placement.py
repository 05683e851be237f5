"""GPU placement and labels with real agents, real children and a fake ``nvidia-smi`` on PATH.

Each child's device is read from the real process's environment (``/proc/PID/environ``), not
from what the agent says; label routing runs two real agents on one Redis."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from agent.bootstrap.register import register
from agent.client import Client
from agent.config import load_config
from agent.config.placement import parse_gpus, serve_only_labelled
from agent.server import ServerThread, create_app, parse_queues
from agent.supervisor.gpus import GpuMemory, parse_memory
from tests.agentproc import AgentProcess, local_config, pid_alive, spawn_agent, wait_until

APP = "python placement_worker.py"


def fake_nvidia_smi(bin_dir: Path, gpus: int = 2, *, hang_query: bool = False) -> Path:
    """An ``nvidia-smi`` that lists ``gpus`` devices and their memory (MiB); with
    ``hang_query`` the memory query sleeps a minute after writing its pid to a file."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, sys, time
        args = sys.argv[1:]
        if args == ["-L"]:
            for i in range({gpus}):
                print(f"GPU {{i}}: Fake A100-SXM4-40GB (UUID: GPU-fake-{{i}})")
            sys.exit(0)
        if args and args[0].startswith("--query-gpu="):
            if {hang_query!r}:
                open({str(bin_dir / "hung.pid")!r}, "a").write(f"{{os.getpid()}}\\n")
                time.sleep(60)
            for i in range({gpus}):
                print(f"{{i}}, {{1000 + 100 * i}}, 40960")
            sys.exit(0)
        sys.exit(2)
        """))
    script.chmod(0o755)
    return bin_dir


def child_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def children(agent: AgentProcess) -> list[dict]:
    executors = agent.get("/status").json()["executors"]
    return [c for info in executors.values() for c in info["children"] if c["state"] == "ready"]


def gpu_status(agent: AgentProcess) -> dict:
    return next(iter(agent.get("/status").json()["executors"].values()))["gpus"]


@pytest.fixture
def with_fake_smi(tmp_path, monkeypatch):
    def install(**kwargs) -> Path:
        bin_dir = fake_nvidia_smi(tmp_path / "bin", **kwargs)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        return bin_dir

    return install


@pytest.fixture
def agents(tmp_path, redis_url):
    started: list[AgentProcess] = []

    def start(queues, wait: bool = True, **kwargs) -> AgentProcess:
        config, port = local_config(tmp_path, redis_url, queues, startup_cmd=APP, **kwargs)
        log = tmp_path / f"agent-{port}.log"
        agent = AgentProcess(config, port, log).start() if wait else spawn_agent(config, port, log)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


# -- GPU placement ---------------------------------------------------------------------------


def test_each_child_sees_one_device_spread_evenly_and_keeps_it_when_replaced(agents, with_fake_smi, redis_url):
    with_fake_smi(gpus=2)
    agent = agents(["gpu"], concurrency=4, processes=None, gpus="all", processes_per_gpu=2,
                   extra_env={"CUDA_VISIBLE_DEVICES": "0,1,2,3"})  # the agent's choice wins
    kids = children(agent)
    assert len(kids) == 4
    seen = collections.Counter()
    for kid in kids:
        env = child_env(kid["pid"])
        assert env["CUDA_VISIBLE_DEVICES"] == kid["gpu"]  # what the process sees is what /status says
        seen[env["CUDA_VISIBLE_DEVICES"]] += 1
    assert seen == {"0": 2, "1": 2}

    # a handler sees its child's device too
    with Client(redis_url) as client:
        ids = [client.enqueue("where", {"seconds": 0.3}, queue="gpu", retention=60).id for _ in range(4)]
        results = [client.wait("gpu", i, timeout=20).result_json() for i in ids]
    assert {r["gpu"] for r in results} <= {"0", "1"} and all(r["gpu"] for r in results)

    # kill a child on device 1: its replacement is on device 1 again
    victim = next(k for k in kids if k["gpu"] == "1")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: len(children(agent)) == 4 and victim["pid"] not in {k["pid"] for k in children(agent)},
               timeout=30, what="the killed child is replaced")
    after = children(agent)
    assert collections.Counter(child_env(k["pid"])["CUDA_VISIBLE_DEVICES"] for k in after) == {"0": 2, "1": 2}

    # memory per device, from nvidia-smi, in /status and /metrics
    status = wait_until(lambda: (g := gpu_status(agent))["devices"]["1"].get("used_bytes") and g,
                        timeout=15, what="GPU memory sampled")
    assert status["devices"]["0"]["used_bytes"] == 1000 << 20
    assert status["devices"]["1"]["total_bytes"] == 40960 << 20
    assert sorted(status["devices"]["1"]["children"]) == sorted(k["pid"] for k in after if k["gpu"] == "1")
    metrics = agent.get("/metrics").text
    assert 'rundown_gpu_memory_used_bytes{gpu="1"} 1.1534336e+09' in metrics
    for kid in after:
        assert f'rundown_child_gpu{{gpu="{kid["gpu"]}",pid="{kid["pid"]}",queue="gpu"}} 1.0' in metrics


def test_explicit_devices_and_processes_are_spread_evenly(agents):
    agent = agents(["gpu"], concurrency=3, processes=3, gpus=[3, 5])  # no nvidia-smi needed
    placed = collections.Counter(child_env(k["pid"])["CUDA_VISIBLE_DEVICES"] for k in children(agent))
    assert placed == {"3": 2, "5": 1}
    # without nvidia-smi the devices are still placed; memory is simply not known
    assert gpu_status(agent)["devices"]["3"].get("used_bytes") is None


def test_a_hung_nvidia_smi_is_killed_and_the_agent_stays_responsive(agents, with_fake_smi):
    bin_dir = with_fake_smi(gpus=1, hang_query=True)
    agent = agents(["gpu"], concurrency=1, processes=None, gpus="all")
    began = time.monotonic()
    status = wait_until(lambda: (g := gpu_status(agent))["memory_error"] and g, timeout=15,
                        what="the memory query times out")
    assert "did not answer within 2s (killed)" in status["memory_error"]
    assert time.monotonic() - began < 10
    pids = [int(x) for x in (bin_dir / "hung.pid").read_text().split()]
    assert pids and not any(pid_alive(p) for p in pids)  # killed, not left behind
    t0 = time.monotonic()
    assert agent.get("/readyz").status_code == 200
    assert time.monotonic() - t0 < 1.0


def test_gpus_all_without_nvidia_smi_stops_the_agent_with_a_clear_error(agents):
    if shutil.which("nvidia-smi"):
        pytest.skip("a real nvidia-smi is on PATH")
    agent = agents(["gpu"], wait=False, gpus="all")
    assert agent.wait(60) == 1
    assert "deployment.gpus is all, but nvidia-smi is not on PATH" in agent.output()


def test_gpu_config_rules(tmp_path):
    def problems(deployment: dict, worker: dict | None = None) -> str:
        path = tmp_path / "c.yml"
        path.write_text(yaml.safe_dump({
            "redis": {"url": "redis://127.0.0.1:6379/0"},
            "worker": {"queues": ["q"], **(worker or {})},
            "deployment": {"path": str(tmp_path), "startup_cmd": "python w.py", **deployment}}))
        try:
            load_config(path)
        except Exception as exc:  # noqa: BLE001 - the report is the point
            return str(exc)
        return ""

    assert "deployment.gpus: GPU placement needs mode: long_running" in problems({"gpus": [0], "mode": "one_shot"})
    assert "deployment.processes: give deployment.processes" in problems(
        {"gpus": [0, 1], "processes": 2, "processes_per_gpu": 2})
    assert "deployment.processes_per_gpu: needs deployment.gpus" in problems({"processes_per_gpu": 2})
    assert "device 1 is listed twice" in problems({"gpus": [1, 1]})
    assert "-1 is not a device index (a whole number from 0 to 1023)" in problems({"gpus": [-1]})
    assert problems({"gpus": [0, 1], "processes_per_gpu": 3}) == ""
    assert parse_gpus(["all"]) == "all" and parse_gpus(["0", "2"]) == (0, 2) and parse_gpus(1) == (1,)


def test_memory_parsing_and_a_missing_nvidia_smi(monkeypatch, tmp_path):
    assert parse_memory("0, 1024, 40960\ngarbage\n1, 2, 3\n") == {
        "0": {"used_bytes": 1024 << 20, "total_bytes": 40960 << 20},
        "1": {"used_bytes": 2 << 20, "total_bytes": 3 << 20}}
    monkeypatch.setenv("PATH", str(tmp_path))
    import asyncio

    memory = GpuMemory()
    asyncio.run(memory.sample())
    assert memory.devices is None and memory.error == "nvidia-smi is not on PATH"


# -- labels ----------------------------------------------------------------------------------


def test_only_an_agent_with_the_labels_takes_from_a_queue_that_requires_them(agents, redis_url):
    queues = ["cpu", {"name": "infer", "requires": ["gpu"]}]
    plain = agents(queues, concurrency=2, processes=2, extra_env={"AGENT_NAME": "plain"})
    assert "queue infer requires the label gpu, which this agent lacks" in plain.output()
    with Client(redis_url) as client:
        # the unlabelled agent alone: the queue's tasks wait, whatever it has room for
        early = [client.enqueue("where", {}, queue="infer", retention=60).id for _ in range(10)]
        time.sleep(2.0)
        assert {client.get_task("infer", i).state for i in early} == {"pending"}
        labelled = agents(queues, concurrency=2, processes=2, extra_env={"AGENT_NAME": "gpu-box"},
                          worker={"labels": ["gpu", "a100"]})
        late = [client.enqueue("where", {}, queue="infer", retention=60).id for _ in range(20)]
        cpu = [client.enqueue("where", {"seconds": 0.05}, queue="cpu", retention=60).id for _ in range(40)]
        infer_by = collections.Counter(client.wait("infer", i, timeout=30).result_json()["agent"]
                                       for i in early + late)
        cpu_by = collections.Counter(client.wait("cpu", i, timeout=30).result_json()["agent"] for i in cpu)
    assert infer_by == {"gpu-box": 30}
    assert set(cpu_by) <= {"plain", "gpu-box"} and sum(cpu_by.values()) == 40
    assert plain.get("/status").json()["queues"].keys() == {"cpu"}
    assert labelled.get("/status").json()["queues"].keys() == {"cpu", "infer"}


def test_label_rules_in_the_config(tmp_path, monkeypatch):
    path = tmp_path / "c.yml"

    def write(worker: dict) -> Path:
        path.write_text(yaml.safe_dump({
            "redis": {"url": "redis://127.0.0.1:6379/0"}, "worker": worker,
            "deployment": {"path": str(tmp_path), "startup_cmd": "python w.py"}}))
        return path

    with pytest.raises(Exception, match="every queue in worker.queues requires labels this agent lacks"):
        load_config(write({"queues": [{"name": "q", "requires": ["gpu"]}]}))
    with pytest.raises(Exception, match=r"worker.queues\[0\].requires: expected a list of labels"):
        load_config(write({"queues": [{"name": "q", "requires": ["has space"]}]}))
    config = load_config(write({"queues": ["cpu", {"name": "q", "requires": ["gpu"]}], "labels": "cpu"}))
    assert config.worker.labels == ("cpu",)
    assert any("queue q requires the label gpu" in w for w in config.warnings)
    monkeypatch.setenv("RUNDOWN_WORKER_LABELS", "gpu,a100")
    config = load_config(write({"queues": [{"name": "q", "requires": ["gpu"]}]}))
    assert config.worker.labels == ("gpu", "a100") and not config.warnings
    kept, notes = serve_only_labelled({"infer.high": 3, "infer.low": 1, "cpu": 1}, {"infer": ("gpu",)}, ())
    assert kept == {"cpu": 1} and len(notes) == 2


def test_the_control_server_queues_file_requirement_reaches_the_agent(tmp_path, redis_url):
    worker_key = "worker-key-0123456789"
    doc = {"api_keys": [{"name": "agents", "key": worker_key, "role": "worker"}],
           "queues": {name: {"deployment": {"git_url": "https://git.example/acme/w.git",
                                            "startup_cmd": "python worker.py"}, **extra}
                      for name, extra in (("infer", {"requires": ["gpu"]}), ("cpu", {}))}}
    with ServerThread(create_app(parse_queues(doc, redis_url=redis_url))) as server:
        def config(labels):
            path = tmp_path / "agent.yml"
            path.write_text(yaml.safe_dump({
                "server": {"url": server.url, "api_key": worker_key},
                "worker": {"queues": ["infer", "cpu"], "labels": labels}}))
            return load_config(path)

        import asyncio

        plain = asyncio.run(register(config([])))
        assert set(plain.queues) == {"cpu"} and set(plain.deployments) == {"cpu"}
        assert any("queue infer requires the label gpu" in w for w in plain.warnings)
        gpu = asyncio.run(register(config(["gpu"])))
        assert set(gpu.queues) == {"cpu", "infer"}
        assert gpu.parents["infer"].requires == ("gpu",)
    bad = {**doc, "queues": {"infer": {**doc["queues"]["infer"], "requires": "two words"}}}
    with pytest.raises(Exception, match=r"queues.infer.requires: expected a list of labels"):
        parse_queues(bad, redis_url=redis_url)
