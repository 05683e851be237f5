"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright), served
by a real uvicorn server on a real redis-server, with real agents as subprocesses.

The five scenarios: the overview renders a seeded Redis's counts; a search finds 12 failed tasks
among 200,000 by error text; a failure group bulk-retried moves its tasks to pending; a queue
paused in the dashboard shows as paused on the agent's ``/status``; live counters change while
an agent drains, with no page reload. Skipped, with the reason, only where no Chromium or no
Playwright can be had. ``DASHBOARD_SCREENSHOTS=DIR`` saves the pages the docs show into DIR.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from agent.broker import keys
from agent.server import ServerThread, create_app, parse_queues
from bench.dashboard_seed import seed_tasks
from tests.agentproc import local_config, spawn_agent, wait_until
from tests.test_dashboard import ADMIN_KEY, Q, doc

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")


def chromium_path() -> str | None:
    explicit = os.environ.get("RUNDOWN_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"browser tests skipped: Playwright is not installed ({exc}); pip install -e '.[dev]'")
    path = chromium_path()
    if path is None:
        pytest.skip("browser tests skipped: no chromium on PATH (apt-get install chromium, or set "
                    "RUNDOWN_CHROMIUM)")
    with sync_playwright() as p:
        try:
            instance = p.chromium.launch(executable_path=path, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        except Exception as exc:  # noqa: BLE001 - any launch failure is a skip reason here
            pytest.skip(f"browser tests skipped: {path} does not start under Playwright: {exc}")
        yield instance
        instance.close()


@pytest.fixture
def server(redis_url):
    with ServerThread(create_app(parse_queues(doc(), redis_url=redis_url))) as srv:
        yield srv


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.on("dialog", lambda dialog: dialog.accept())
    tab.goto(f"{server.url}/dashboard/")
    tab.fill("#key", ADMIN_KEY)
    tab.click("#login")
    tab.wait_for_url(f"{server.url}/dashboard/")
    yield tab
    context.close()


def shoot(tab, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(Path(SHOTS) / f"dashboard-{name}.png"), full_page=True)


def count(tab, queue: str, state: str) -> int:
    return int(tab.inner_text(f'tr[data-queue="{queue}"] td[data-count="{state}"]').replace(",", ""))


def test_overview_renders_the_counts_of_a_seeded_redis(page, r, server):
    expected = {Q: dict(pending=1234, scheduled=7, retry=56, archived=89, completed=3),
                "inference.high": dict(pending=2, scheduled=0, retry=0, archived=1001, completed=40)}
    for queue, states in expected.items():
        for state, n in states.items():
            seed_tasks(r, queue, n, state, id_prefix=f"{queue}-{state}",
                       error=(lambda i: "boom") if state in ("retry", "archived") else (lambda i: ""))
    r.set(keys.paused("inference.high"), 1)
    page.reload()
    for queue, states in expected.items():
        for state, n in states.items():
            assert count(page, queue, state) == n, (queue, state)
        assert count(page, queue, "active") == 0
    assert page.inner_text('tr[data-queue="inference.high"] .badge') == "paused"
    assert page.inner_text(f'tr[data-queue="{Q}"] .badge') == "running"
    assert "1,234" in page.inner_text(f'tr[data-queue="{Q}"]')
    shoot(page, "overview-seeded")


def test_search_finds_12_failed_tasks_among_200000_by_error_text(page, r, server):
    t0 = time.time() - 3600
    seed_tasks(r, Q, 120_000, "pending", id_prefix="p", task_type=lambda i: "email:send")
    seed_tasks(r, Q, 79_988, "archived", id_prefix="a", task_type=lambda i: "email:send",
               error=lambda i: f"SMTP 421 from mx{i % 7}: try again later", when=lambda i: t0 + i / 100)
    wanted = seed_tasks(r, Q, 12, "archived", id_prefix="quota", task_type=lambda i: "email:send",
                        error=lambda i: f"DiskQuotaExceeded: user {i} is over quota",
                        when=lambda i: t0 + 400 + i)
    assert r.llen(keys.pending(Q)) + r.zcard(keys.archived(Q)) == 200_000
    page.goto(f"{server.url}/dashboard/tasks")
    page.fill("#f-error", "diskquotaexceeded")
    page.click("#do-search")  # the page showed an unfiltered first page: wait for the search's
    page.wait_for_url(lambda url: "error=diskquotaexceeded" in url, timeout=90_000)
    page.wait_for_selector("#result-meta")
    found: list[str] = []
    for _ in range(200):  # a loaded machine may cut a page at its scan budget: follow "next page"
        rows = page.locator("tr.task")
        found += [rows.nth(i).get_attribute("data-id") for i in range(rows.count())]
        more = page.locator("#next-page")
        if not more.count():
            break
        shown = page.url
        more.click()  # htmx swaps the results and pushes the new cursor into the URL
        page.wait_for_url(lambda url, u=shown: url != u, timeout=90_000)
        page.wait_for_selector("#result-meta")
    assert sorted(found) == sorted(wanted)
    if page.locator("tr.task").count() == 0:  # the last page held none: show the first again
        page.goto(f"{server.url}/dashboard/tasks?error=diskquotaexceeded")
    assert "over quota" in page.inner_text("#task-table")
    shoot(page, "search")
    link = page.locator(f'tr.task[data-id="{wanted[0]}"] a')
    if link.count():
        link.click()
    else:  # on an earlier page
        page.goto(f"{server.url}/dashboard/task?queue={Q}&id={wanted[0]}")
    page.wait_for_selector("#task-state")
    assert page.inner_text("#task-state") == "archived"
    assert "DiskQuotaExceeded: user 0 is over quota" in page.inner_text("#task-error")
    shoot(page, "task")


def test_failure_group_bulk_retry_moves_its_tasks_to_pending(page, r, server):
    group = seed_tasks(r, Q, 400, "archived", id_prefix="g", task_type=lambda i: "charge",
                       error=lambda i: f"card {i} declined by gateway 10.1.2.{i % 250}")
    group += seed_tasks(r, Q, 25, "retry", id_prefix="h", task_type=lambda i: "charge",
                        error=lambda i: f"card {i} declined by gateway 10.1.2.{i % 250}")
    other = seed_tasks(r, Q, 30, "archived", id_prefix="o", task_type=lambda i: "charge",
                       error=lambda i: "TimeoutError: gateway did not answer")
    page.goto(f"{server.url}/dashboard/failures")
    row = page.locator("tr.group", has_text="declined")
    assert row.locator("td").first.inner_text() == "425"
    assert "card <n> declined by gateway <addr>" in row.inner_text()
    shoot(page, "failures")
    row.locator('button[data-action="group-retry"]').click()
    page.wait_for_selector("#message")
    assert "425 tasks moved to pending" in page.inner_text("#message")
    pending = sorted(p.decode() for p in r.lrange(keys.pending(Q), 0, -1))
    assert pending == sorted(group)
    assert all(r.hget(keys.task_key(Q, t), "state") == b"pending" for t in group)
    assert sorted(m.decode() for m in r.zrange(keys.archived(Q), 0, -1)) == sorted(other)
    wait_until(lambda: page.locator("tr.group", has_text="declined").count() == 0, timeout=15,
               what="the retried group leaves the page")
    assert page.locator("tr.group", has_text="TimeoutError").count() == 1


def _agent(tmp_path, redis_url, **kw):
    config, port = local_config(tmp_path, redis_url, [Q], concurrency=1, processes=1,
                                shutdown_timeout="2s", **kw)
    agent = spawn_agent(config, port, tmp_path / "agent.log")
    agent.wait_ready(timeout=60)
    return agent


def test_pause_in_the_dashboard_shows_on_the_agents_status(page, r, server, tmp_path, redis_url):
    agent = _agent(tmp_path, redis_url)
    try:
        def queue_status() -> dict:
            return httpx.get(f"http://127.0.0.1:{agent.port}/status", timeout=5).json()["queues"][Q]

        assert queue_status()["paused"] is False
        page.reload()
        wait_until(lambda: page.locator("#agents tbody tr", has_text=Q).count() == 1, timeout=15,
                   what="the agent's heartbeat on the overview")
        page.click(f'tr[data-queue="{Q}"] button[data-action="pause"]')
        wait_until(lambda: queue_status()["paused"], timeout=15, what="paused on /status")
        wait_until(lambda: page.inner_text(f'tr[data-queue="{Q}"] .badge') == "paused", timeout=10,
                   what="paused on the overview")
        seed_tasks(r, Q, 3, "pending", task_type=lambda i: "stamp")
        time.sleep(1.5)
        assert r.llen(keys.pending(Q)) == 3  # a paused queue is not served
        page.click(f'tr[data-queue="{Q}"] button[data-action="unpause"]')
        wait_until(lambda: not queue_status()["paused"], timeout=15, what="resumed on /status")
        wait_until(lambda: r.llen(keys.pending(Q)) == 0, timeout=15, what="the resumed queue drains")
    finally:
        assert agent.stop() == 0


def test_live_counters_change_while_an_agent_drains_without_a_reload(page, r, server, tmp_path, redis_url):
    n = 1000  # 10 s of 10 ms handlers at concurrency 1: several 2 s polls see it fall
    seed_tasks(r, Q, n, "pending", task_type=lambda i: "sleep", payload=lambda i: b'{"seconds": 0.01}')
    page.reload()
    assert count(page, Q, "pending") == n
    page.evaluate("window.__not_reloaded = true")
    agent = _agent(tmp_path, redis_url)
    try:
        seen = [n]
        deadline = time.monotonic() + 60
        while seen[-1] > 0 and time.monotonic() < deadline:
            value = count(page, Q, "pending")
            if value != seen[-1]:
                seen.append(value)
                if len(seen) == 4:
                    shoot(page, "overview")  # mid-drain: counters, rates and the agent at work
            time.sleep(0.2)
        assert seen[-1] == 0, seen
        assert len(seen) >= 3, f"expected intermediate counts while it drained, saw {seen}"
        assert seen == sorted(seen, reverse=True)
        assert page.evaluate("window.__not_reloaded") is True
        wait_until(lambda: "1,000 /" in page.inner_text(f'tr[data-queue="{Q}"]'), timeout=10,
                   what="today's processed count")
    finally:
        assert agent.stop() == 0
