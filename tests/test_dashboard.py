"""The dashboard over HTTP against a real redis-server: login and roles, CSRF, the search
(every filter, pagination that neither repeats nor misses a task, the scan budget), failure
groups and their bulk actions (checked on the Redis keys), and bad data written by a peer.
The browser scenarios are in tests/test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import re
import time
import warnings

import pytest
import redis.asyncio as aioredis

from agent.broker import keys
from agent.server import create_app, parse_queues
from agent.server.dashboard import Sampler, failures, search
from bench.dashboard_seed import seed_tasks
from tests.agentproc import wait_until
from tests.test_server import ADMIN_KEY, CLIENT_KEY, WORKER_KEY, queues_doc

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

READONLY_KEY = "readonly-key-0123456789"
PEEKER_KEY = "peeker-key-01234567890"
Q = "emails"


def doc() -> dict:
    d = queues_doc()
    d["api_keys"] += [{"name": "viewer", "key": READONLY_KEY, "role": "readonly"},
                      {"name": "peeker", "key": PEEKER_KEY, "role": "readonly", "payloads": True}]
    return d


@pytest.fixture
def app(redis_url):
    return create_app(parse_queues(doc(), redis_url=redis_url))


@pytest.fixture
def http(app):
    with TestClient(app) as c:
        yield c


def login(c: TestClient, key: str) -> str:
    """Log in through the form; returns the page's CSRF token."""
    resp = c.post("/dashboard/login", data={"key": key, "next": "/dashboard/"}, follow_redirects=False)
    assert resp.status_code == 303, resp.text
    page = c.get("/dashboard/")
    return re.search(r'X-CSRF-Token": "([^"]*)"', page.text).group(1)


def run(coro):
    return asyncio.run(coro)


# -- login, roles, CSRF ----------------------------------------------------------------------

def test_login_cookie_proves_the_key_without_holding_it(http):
    resp = http.get("/dashboard/tasks?state=retry", follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"].startswith("/dashboard/login?next=")
    assert http.post("/dashboard/login", data={"key": "wrong-key-0123456789"}).status_code == 401
    assert http.post("/dashboard/login", data={"key": WORKER_KEY}).status_code == 401  # agents' key
    resp = http.post("/dashboard/login", data={"key": ADMIN_KEY, "next": "https://evil.example/"},
                     follow_redirects=False)
    assert resp.headers["location"] == "/dashboard/"  # no open redirect
    cookie = resp.headers["set-cookie"]
    assert ADMIN_KEY not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert http.get("/dashboard/").status_code == 200
    value = http.cookies.get("rundown_dashboard")
    name, expiry, mac = value.split(".")
    for forged in (f"{name}.{int(expiry) + 99}.{mac}", f"{name}.{expiry}.{'0' * len(mac)}", "x.y.z", ""):
        http.cookies.set("rundown_dashboard", forged, path="/dashboard")
        assert http.get("/dashboard/", follow_redirects=False).status_code == 303, forged
    http.cookies.clear()
    bearer = {"Authorization": f"Bearer {CLIENT_KEY}"}
    assert http.get("/dashboard/", headers=bearer).status_code == 200
    assert http.get("/dashboard/", headers={"Authorization": f"Bearer {WORKER_KEY}"}).status_code == 401


def test_actions_need_the_admin_key_and_the_csrf_token(http, r, redis_url):
    seed_tasks(r, Q, 3, "archived", error=lambda i: "boom")
    token = login(http, ADMIN_KEY)
    body = {"op": "retry", "task": f"{Q}\nt-00000000"}
    assert http.post("/dashboard/tasks/action", data=body).status_code == 403  # no token
    assert http.post("/dashboard/tasks/action", data=body, headers={"X-CSRF-Token": "0" * 32}).status_code == 403
    assert r.zcard(keys.archived(Q)) == 3 and r.llen(keys.pending(Q)) == 0
    assert http.post("/dashboard/queues/emails/drop", headers={"X-CSRF-Token": token}).status_code == 404
    assert http.post("/dashboard/queues/nope/pause", headers={"X-CSRF-Token": token}).status_code == 404
    assert not r.exists(keys.paused(Q))
    assert http.post("/dashboard/queues/emails/pause", headers={"X-CSRF-Token": token}).status_code == 200
    assert r.exists(keys.paused(Q))
    http.cookies.clear()
    token = login(http, CLIENT_KEY)  # a client may look, not act
    resp = http.post("/dashboard/tasks/action", data=body, headers={"X-CSRF-Token": token})
    assert resp.status_code == 403 and "admin" in resp.text
    assert http.post("/dashboard/queues/emails/unpause", headers={"X-CSRF-Token": token}).status_code == 403
    assert r.exists(keys.paused(Q)) and r.zcard(keys.archived(Q)) == 3
    resp = http.post("/dashboard/tasks/action", data=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status_code == 200 and "1 task moved to pending" in resp.text  # a script needs no token
    assert r.lrange(keys.pending(Q), 0, -1) == [b"t-00000000"]


def test_readonly_key_sees_no_payloads_unless_allowed(http, r):
    seed_tasks(r, Q, 1, "archived", error=lambda i: "boom", payload=lambda i: b'{"card": "4111-secret"}')
    r.hset(keys.task_key(Q, "t-00000000"), "result", b'{"answer": "result-secret"}')
    url = f"/dashboard/task?queue={Q}&id=t-00000000"
    for key, sees in ((READONLY_KEY, False), (PEEKER_KEY, True), (CLIENT_KEY, True)):
        http.cookies.clear()
        login(http, key)
        page = http.get(url).text
        assert ("4111-secret" in page) is sees and ("result-secret" in page) is sees, key
        assert "boom" in page and ('id="payload-hidden"' in page) is not sees
        api = http.get("/tasks/t-00000000", headers={"Authorization": f"Bearer {key}"}).json()
        assert ("4111-secret" in str(api)) is sees and ("result-secret" in str(api)) is sees
    assert http.post("/tasks", headers={"Authorization": f"Bearer {READONLY_KEY}"},
                     json={"type": "x", "queue": Q}).status_code == 403


def test_queues_file_rejects_a_non_boolean_payloads(redis_url):
    d = doc()
    d["api_keys"][-1]["payloads"] = "yes"
    with pytest.raises(Exception, match=r"api_keys\[4\]\.payloads: must be true or false"):
        parse_queues(d, redis_url=redis_url)


# -- search -----------------------------------------------------------------------------------

def _seed_mix(r) -> dict[str, list[str]]:
    t0 = 1_790_000_000
    made = {
        "pending": seed_tasks(r, Q, 700, "pending", id_prefix="p", task_type=lambda i: "a" if i % 2 else "b",
                              when=lambda i: t0 + i),
        "retry": seed_tasks(r, Q, 500, "retry", id_prefix="r", error=lambda i: f"timeout after {i}s",
                            when=lambda i: t0 + i),
        "archived": seed_tasks(r, Q, 900, "archived", id_prefix="x", task_type=lambda i: "a",
                               error=lambda i: "Disk FULL on /dev/sda" if i % 75 == 0 else f"E{i}",
                               when=lambda i: t0 + i),
        "completed": seed_tasks(r, "inference.high", 400, "completed", id_prefix="c",
                                when=lambda i: t0 + i),
    }
    return made


def _all_pages(client, query, size=37, budget=search.DEFAULT_BUDGET, time_budget=60.0):
    seen, cursor, pages = [], None, 0
    while True:
        page = run(_search(client, query, cursor, size, budget, time_budget))
        seen += [(t.queue, t.id) for t in page.tasks]
        pages += 1
        if page.next_cursor is None:
            return seen, pages
        cursor = page.next_cursor


async def _search(url, query, cursor, size, budget, time_budget=60.0):
    client = aioredis.Redis.from_url(url)
    try:
        return await search.search(client, query, cursor, size=size, budget=budget, time_budget=time_budget)
    finally:
        await client.aclose()


def test_search_filters_and_pages_neither_repeat_nor_miss(redis_url, r):
    made = _seed_mix(r)
    queues = (Q, "inference.high")
    everything, pages = _all_pages(redis_url, search.SearchQuery(queues=queues))
    assert len(everything) == len(set(everything)) == 2500 and pages == 68
    assert {i for _, i in everything} == {i for ids in made.values() for i in ids}
    cases = {
        search.SearchQuery(queues=queues, states=("archived",), error="disk full"): 12,
        search.SearchQuery(queues=queues, type="a"): 350 + 900,
        search.SearchQuery(queues=queues, id_prefix="r-000001"): 100,
        search.SearchQuery(queues=queues, error="TIMEOUT AFTER 4"): 1 + 10 + 100,
        search.SearchQuery(queues=queues, states=("retry", "archived"),
                           since=1_790_000_100, until=1_790_000_199): 200,
        search.SearchQuery(queues=queues, states=("pending",), since=1_790_000_690): 10,
        search.SearchQuery(queues=queues, states=("completed",), until=1_790_000_009): 10,
        search.SearchQuery(queues=queues, type="nope"): 0,
    }
    for query, expected in cases.items():
        found, _ = _all_pages(redis_url, query, size=7)
        assert len(found) == len(set(found)) == expected, query
    found, _ = _all_pages(redis_url, search.SearchQuery(queues=queues, error="disk full"), size=5, budget=100)
    assert len(found) == len(set(found)) == 12  # a tiny budget: many short pages, same answer
    found, pages = _all_pages(redis_url, search.SearchQuery(queues=queues, type="a"), size=500, time_budget=0)
    assert len(found) == len(set(found)) == 1250 and pages >= 3  # no time: a chunk per page
    assert search.search_states(search.SearchQuery(queues=queues, error="x"))[:2] == ["retry", "archived"]
    first = run(_search(redis_url, search.SearchQuery(queues=queues, error="nothing like it"), None, 50, 1000))
    assert first.budget_spent and first.tasks == [] and first.next_cursor
    assert 1000 <= first.examined < 1000 + search.CHUNK
    first = run(_search(redis_url, search.SearchQuery(queues=queues), None, 37, 1000))
    assert first.examined == 37 and first.total == 2500 and len(first.tasks) == 37
    every = run(_search(redis_url, search.SearchQuery(queues=queues, error="nothing like it"), None, 50,
                        10**9))
    assert every.examined == 2500 and every.next_cursor is None and not every.budget_spent


def test_search_page_over_http_escapes_and_shows_the_meta(http, r):
    seed_tasks(r, Q, 3, "archived", error=lambda i: "<script>alert(1)</script> failed")
    login(http, CLIENT_KEY)
    page = http.get("/dashboard/tasks?error=alert").text
    assert page.count('class="task"') == 3 and "<script>alert" not in page and "&lt;script&gt;" in page
    assert http.get("/dashboard/tasks?queue=nope").status_code == 400
    resp = http.get("/dashboard/tasks?since=yesterday")
    assert resp.status_code == 400 and "since must be a UTC time" in resp.text
    assert http.get("/dashboard/tasks?cursor=1.x").status_code == 400


def test_task_page_shows_progress_headers_and_other_fields(http, r):
    seed_tasks(r, Q, 1, "pending")
    key = keys.task_key(Q, "t-00000000")
    r.hset(key, mapping={"rundown_progress": b'{"progress": 0.4, "message": "page 4 of 10", "updated_at": 1}',
                         "note": "<b>hi</b>"})
    login(http, CLIENT_KEY)
    page = http.get(f"/dashboard/task?queue={Q}&id=t-00000000").text
    assert 'value="0.4"' in page and "40%" in page and "page 4 of 10" in page
    assert "&lt;b&gt;hi&lt;/b&gt;" in page
    r.hset(key, "rundown_progress", b"not json")  # not ours: not shown as progress, no error
    assert "task-progress" not in http.get(f"/dashboard/task?queue={Q}&id=t-00000000").text


def test_bad_data_from_a_peer_is_shown_not_fatal(http, r):
    seed_tasks(r, Q, 2, "archived", error=lambda i: "boom")
    r.zadd(keys.archived(Q), {"garbage": 1, "no-hash": 2})
    r.hset(keys.task_key(Q, "garbage"), mapping={"msg": b"\xff\x00not protobuf", "state": "archived"})
    login(http, ADMIN_KEY)
    page = http.get(f"/dashboard/tasks?queue={Q}&state=archived").text
    assert page.count('class="task"') == 4
    assert "undecodable" in http.get(f"/dashboard/task?queue={Q}&id=garbage").text
    assert http.get(f"/dashboard/task?queue={Q}&id=no-hash").status_code == 404
    assert http.get("/dashboard/failures").status_code == 200
    assert http.get("/dashboard/").status_code == 200


# -- failure groups and bulk actions ---------------------------------------------------------

def test_failure_groups_and_group_retry_touch_only_the_group(http, r, redis_url):
    seed_tasks(r, Q, 300, "archived", id_prefix="a", task_type=lambda i: "send",
               error=lambda i: f"SMTP 421 from 10.0.0.{i % 9}:25 after {i}.5s", when=lambda i: 1_790_000_000 + i)
    seed_tasks(r, Q, 50, "retry", id_prefix="b", task_type=lambda i: "send",
               error=lambda i: f"SMTP 421 from 10.0.0.{i % 9}:25 after {i}.5s", when=lambda i: 1_790_001_000 + i)
    seed_tasks(r, Q, 40, "archived", id_prefix="c", task_type=lambda i: "other",
               error=lambda i: f"SMTP 421 from 10.0.0.1:25 after {i}s", when=lambda i: 1_790_000_000 + i)
    seed_tasks(r, Q, 7, "archived", id_prefix="d", task_type=lambda i: "send",
               error=lambda i: f"KeyError: 'user_{i}'")
    client = aioredis.Redis.from_url(redis_url)
    report = asyncio.run(failures.failure_groups(client, [Q]))
    groups = {(g.type, g.error): g for g in report.groups}
    smtp = groups[("send", "SMTP <n> from <addr> after <n>s")]
    assert smtp.count == 350 and smtp.retry == 50
    assert (smtp.first_seen, smtp.last_seen) == (1_790_000_000, 1_790_001_049)
    assert groups[("other", "SMTP <n> from <addr> after <n>s")].count == 40
    assert groups[("send", "KeyError: '<str>'")].count == 7 and report.total == report.read == 397
    token = login(http, ADMIN_KEY)
    resp = http.post("/dashboard/failures/action", headers={"X-CSRF-Token": token},
                     data={"op": "retry", "queue": Q, "type": "send", "error": smtp.error})
    assert resp.status_code == 200 and "350 tasks moved to pending" in resp.text
    pending = {p.decode() for p in r.lrange(keys.pending(Q), 0, -1)}
    assert len(pending) == 350 and all(p[0] in "ab" for p in pending)
    assert all(r.hget(keys.task_key(Q, p), "state") == b"pending" for p in list(pending)[:50])
    assert r.zcard(keys.archived(Q)) == 47 and r.zcard(keys.retry(Q)) == 0
    resp = http.post("/dashboard/failures/action", headers={"X-CSRF-Token": token},
                     data={"op": "delete", "queue": Q, "type": "send", "error": "KeyError: '<str>'"})
    assert "7 tasks deleted" in resp.text and r.zcard(keys.archived(Q)) == 40
    assert not r.exists(keys.task_key(Q, "d-00000000"))


def test_an_action_on_a_task_that_started_meanwhile_is_refused_for_that_task(http, r):
    ids = seed_tasks(r, Q, 4, "retry", error=lambda i: "boom")
    # t-00000001 was taken by an agent between the page and the click: active, leased.
    r.zrem(keys.retry(Q), ids[1])
    r.hset(keys.task_key(Q, ids[1]), "state", "active")
    r.lpush(keys.active(Q), ids[1])
    r.zadd(keys.lease(Q), {ids[1]: int(time.time()) + 30})
    token = login(http, ADMIN_KEY)
    for op, word in (("retry", "moved to pending"), ("delete", "deleted")):
        resp = http.post("/dashboard/tasks/action", headers={"X-CSRF-Token": token},
                         data={"op": op, "task": [f"{Q}\n{i}" for i in ids[:2]]})
        assert f"1 task {word}" in resp.text and "1 running" in resp.text, resp.text
    assert r.hget(keys.task_key(Q, ids[1]), "state") == b"active" and r.lrange(keys.active(Q), 0, -1) == [ids[1].encode()]
    assert not r.exists(keys.task_key(Q, ids[0]))


def test_bulk_selected_actions_over_many_tasks(http, r):
    ids = seed_tasks(r, Q, 3000, "archived", error=lambda i: "boom")
    token = login(http, ADMIN_KEY)
    resp = http.post("/dashboard/tasks/action", headers={"X-CSRF-Token": token},
                     data={"op": "retry", "task": [f"{Q}\n{i}" for i in ids] + [f"{Q}\nmissing"]})
    assert "3,000 tasks moved to pending (1 not found)" in resp.text
    assert r.llen(keys.pending(Q)) == 3000 and r.zcard(keys.archived(Q)) == 0
    resp = http.post("/dashboard/tasks/action", headers={"X-CSRF-Token": token},
                     data={"op": "archive", "task": [f"{Q}\n{i}" for i in ids[:10]]})
    assert "10 tasks archived" in resp.text and r.llen(keys.pending(Q)) == 2990


def test_overview_counts_and_rates(http, r, app):
    seed_tasks(r, Q, 5, "pending")
    seed_tasks(r, Q, 2, "retry", error=lambda i: "x")
    r.set(keys.paused(Q), 1)
    login(http, CLIENT_KEY)
    page = http.get("/dashboard/?fragment=1").text
    row = re.search(r'<tr data-queue="emails">(.*?)</tr>', page, re.S).group(1)
    assert re.search(r'data-count="pending"><a [^>]*>5<', row) and re.search(r'data-count="retry"><a [^>]*>2<', row)
    assert "paused" in row and "<html" not in page  # a fragment only
    assert Q in app.state.dashboard_sampler.history  # sampled once at startup
    done, failed = asyncio.run(_rates(redis_url=r.connection_pool.connection_kwargs, r=r))
    assert done[-1] > 0 and failed[-1] == 0
    r.sadd(keys.ALL_QUEUES, "from-go")  # a queue no queues file names: listed and sampled too
    assert 'data-queue="from-go"' in http.get("/dashboard/?fragment=1").text
    wait_until(lambda: "from-go" in app.state.dashboard_sampler.history, timeout=10, what="sampled")


async def _rates(redis_url, r):
    client = aioredis.Redis(host=redis_url["host"], port=redis_url["port"])
    sampler = Sampler(client, lambda: [Q])
    await sampler.sample()
    r.incrby(keys.processed_total(Q), 50)
    await asyncio.sleep(0.05)
    await sampler.sample()
    await client.aclose()
    return sampler.rates(Q)
