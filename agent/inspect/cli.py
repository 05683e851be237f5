"""The inspection CLI: ``rundown-agent inspect ...`` or ``python -m agent.inspect ...``.

Works on any asynq-format Redis. Tables (rich) for people, ``--json`` for scripts. Every
error (queue or task not found, a refused operation, Redis unreachable) is one line on
stderr and exit status 1.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import click
import redis
from rich.console import Console
from rich.text import Text

from agent.broker.errors import BrokerError, QueueNotFoundError
from agent.broker.flow.published import read_flow
from agent.config.values import printable
from agent.inspect.inspector import (
    ARCHIVE_ALL_STATES,
    DEFAULT_PAGE_SIZE,
    DELETE_ALL_STATES,
    RUN_ALL_STATES,
    STATES,
    Inspector,
    InspectorError,
    TaskDetails,
)
from agent.inspect.tables import new_table, print_table
from agent.logs import redact as redact_secrets
from agent.logs import url_secrets

DEFAULT_URL = "redis://127.0.0.1:6379/0"
URL_ENV = "RUNDOWN_REDIS_URL"
PIPE_WIDTH = 160  # table width when stdout is not a terminal and COLUMNS is unset
CELL_WIDTH = 40


# -- formatting -------------------------------------------------------------------------


def redact(text: str, url: str | None = None) -> str:
    """``text`` with the credentials of every URL in it masked, and those of ``url`` wherever
    they appear (a driver's message may quote them without the URL around them)."""
    return redact_secrets(text, url_secrets(url) if url else [])


def format_duration(seconds: float) -> str:
    """Go-like durations: 350ms, 12.5s, 3m5s, 2h0m10s, 3d4h."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s"


def format_time(ts: float | None) -> str:
    if not ts:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def format_ago(ts: float | None, now: float) -> str:
    return f"{format_duration(now - ts)} ago" if ts else ""


def progress_text(progress: dict[str, Any], now: float) -> str:
    """``40% decoded 4 of 10 chunks (reported 120ms ago)``; the message shown escaped."""
    text = f"{float(progress['progress']) * 100:.0f}%"
    if progress.get("message"):
        text += f" {printable(str(progress['message']))}"
    at = progress.get("updated_at")
    if isinstance(at, (int, float)) and at > 0:
        text += f" (reported {format_ago(at, now)})"
    return text


def format_in(ts: float | None, now: float) -> str:
    if not ts:
        return ""
    return "now" if ts <= now else f"in {format_duration(ts - now)}"


def _printable(text: str) -> bool:
    return all(ch.isprintable() or ch in "\n\r\t" for ch in text)


def describe_bytes(data: bytes | None) -> tuple[str, str]:
    """(kind, text) for a payload or result: JSON (pretty), text, or hex when binary."""
    if not data:
        return "empty", ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"binary, {len(data)} bytes, hex", data.hex()
    if not _printable(text):
        return f"binary, {len(data)} bytes, hex", data.hex()
    try:
        return "JSON", json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return "text", text


def cell_bytes(data: bytes | None, width: int = CELL_WIDTH) -> str:
    """A payload on one line: the text when printable, else ``hex:...``; truncated."""
    if not data:
        return ""
    try:
        text = data.decode("utf-8")
        if not _printable(text):
            raise ValueError
        text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    except ValueError:
        text = "hex:" + data.hex()
    return text if len(text) <= width else text[: width - 3] + "..."


def cell_text(text: str, width: int = CELL_WIDTH) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def format_queues(queues: dict[str, int]) -> str:
    """name:weight, highest weight first (as ``asynq server ls``)."""
    return " ".join(f"{n}:{p}" for n, p in sorted(queues.items(), key=lambda kv: (-kv[1], kv[0])))


# -- plumbing ---------------------------------------------------------------------------


@dataclass
class Settings:
    url: str = DEFAULT_URL
    json: bool = False
    _inspector: Inspector | None = None

    def inspector(self) -> Inspector:
        if self._inspector is None:
            try:
                self._inspector = Inspector.from_url(self.url)
            except ValueError as exc:
                raise InspectorError(f"invalid Redis URL {redact(self.url)!r}: {redact(str(exc), self.url)}") from exc
        return self._inspector

    def close(self) -> None:
        if self._inspector is not None:
            self._inspector.close()


def console() -> Console:
    out = Console(highlight=False, markup=False, emoji=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(highlight=False, markup=False, emoji=False, width=PIPE_WIDTH)
    return out


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Settings).json = True


json_option = click.option("--json", "as_json", is_flag=True, expose_value=False,
                           callback=_set_json, is_eager=True,
                           help="Print plain JSON (same as the global --json).")


class InspectGroup(click.Group):
    """Turns every expected failure into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokerError as exc:  # queue/task not found, refused operation, bad argument
            _fail(ctx, str(exc))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            settings = ctx.find_object(Settings)
            url = settings.url if settings else None
            _fail(ctx, f"cannot reach Redis at {redact(url) if url else '?'}: {redact(str(exc), url)}")
        except redis.RedisError as exc:
            settings = ctx.find_object(Settings)
            _fail(ctx, f"Redis error: {redact(str(exc), settings.url if settings else None)}")


def _fail(ctx: click.Context, message: str) -> None:
    click.echo(f"error: {message}", err=True)
    ctx.exit(1)


def _settings(ctx: click.Context) -> Settings:
    return ctx.ensure_object(Settings)


# -- the group --------------------------------------------------------------------------


@click.group(cls=InspectGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--redis", "url", envvar=URL_ENV, default=DEFAULT_URL, show_default=True,
              show_envvar=True, metavar="URL", help="Redis holding the asynq keys.")
@click.option("--json", "as_json", is_flag=True, help="Print plain JSON instead of tables.")
@click.pass_context
def inspect_cli(ctx: click.Context, url: str, as_json: bool) -> None:
    """Inspect and manage asynq-format queues, tasks and servers."""
    settings = ctx.ensure_object(Settings)
    settings.url = url
    settings.json = settings.json or as_json
    ctx.call_on_close(settings.close)


def main() -> None:
    inspect_cli(obj=Settings(DEFAULT_URL), prog_name="python -m agent.inspect")


# -- stats and queues -------------------------------------------------------------------


def print_flow_table(out, rows) -> None:
    """The fleet-wide limits of the queues that have any (as their agents published them),
    with the rate's tokens now, the tasks running (leases) and how long the head task waited."""
    table = new_table("Queue", "Rate", "Tokens", "Max running", "Running", "Key max running", "Types",
                      "Head wait", right=("Tokens", "Max running", "Running", "Key max running", "Head wait"))
    for s, f in rows:
        types = ", ".join(f"{name} {spec['rate']}" for name, spec in f.get("types", {}).items())
        table.add_row(Text(s.queue), f.get("rate", "-"), "-" if f["tokens"] is None else str(f["tokens"]),
                      str(f.get("max_running", "-")), str(f["running"]), str(f.get("key_max_running", "-")),
                      Text(types or "-"), format_duration(s.latency))
    print_table(out, table, "Flow limits (fleet-wide, enforced at dequeue by rundown agents; Go asynq "
                            "servers ignore them)")


@inspect_cli.command("stats")
@json_option
@click.pass_context
def stats_cmd(ctx: click.Context) -> None:
    """Every queue: tasks by state, today's counters, latency, paused."""
    settings = _settings(ctx)
    inspector = settings.inspector()
    now = time.time()
    stats = []
    for queue in inspector.queues():
        try:
            stats.append(inspector.queue_stats(queue, memory=settings.json, now=now))
        except QueueNotFoundError:
            continue  # removed since SMEMBERS
    date = time.strftime("%Y-%m-%d", time.gmtime(now))
    flow = read_flow(inspector.redis, [s.queue for s in stats])  # queues with flow limits
    if settings.json:
        emit_json({"date": date, "queues": [
            {**s.to_dict(), **({"flow": {**flow[s.queue], "head_wait_seconds": s.latency}}
                               if s.queue in flow else {})} for s in stats]})
        return
    out = console()
    if not stats:
        click.echo("No queues (asynq:queues is empty)")
        return
    counts = ("Pending", "Active", "Scheduled", "Retry", "Archived", "Completed", "Aggregating",
              "Processed", "Failed")
    table = new_table("Queue", *counts, "Latency", "Paused", right=(*counts, "Latency"),
                      footer=len(stats) > 1)
    for s in stats:
        table.add_row(Text(s.queue), *(str(v) for v in (
            s.pending, s.active, s.scheduled, s.retry, s.archived, s.completed, s.aggregating,
            s.processed, s.failed)), format_duration(s.latency), "yes" if s.paused else "no")
    table.columns[0].footer = "total"
    for column, name in zip(table.columns[1:], counts, strict=False):
        column.footer = str(sum(getattr(s, name.lower()) for s in stats))
    print_table(out, table, f"Queues (processed and failed today: {date} UTC)")
    if flow:
        print_flow_table(out, [(s, flow[s.queue]) for s in stats if s.queue in flow])


@inspect_cli.group("queue")
def queue_group() -> None:
    """Queue history, pause and unpause."""


@queue_group.command("ls")
@json_option
@click.pass_context
def queue_ls(ctx: click.Context) -> None:
    """Queue names (asynq:queues)."""
    settings = _settings(ctx)
    names = settings.inspector().queues()
    if settings.json:
        emit_json(names)
    else:
        for name in names:
            click.echo(name)


@queue_group.command("history")
@click.argument("queue")
@click.option("--days", default=7, show_default=True, type=click.IntRange(min=1),
              help="How many UTC days, today included.")
@json_option
@click.pass_context
def queue_history(ctx: click.Context, queue: str, days: int) -> None:
    """Processed and failed tasks per UTC day."""
    settings = _settings(ctx)
    history = settings.inspector().history(queue, days)
    if settings.json:
        emit_json({"queue": queue, "days": [d.to_dict() for d in history]})
        return
    table = new_table("Date (UTC)", "Processed", "Failed", "Failure rate",
                      right=("Processed", "Failed", "Failure rate"))
    for day in history:
        rate = f"{100 * day.failed / day.processed:.1f}%" if day.processed else "-"
        table.add_row(day.date, str(day.processed), str(day.failed), rate)
    print_table(console(), table, f"Queue {queue!r}: last {days} day(s)")


@queue_group.command("pause")
@click.argument("queue")
@json_option
@click.pass_context
def queue_pause(ctx: click.Context, queue: str) -> None:
    """Stop servers from taking tasks from QUEUE."""
    settings = _settings(ctx)
    settings.inspector().pause(queue)
    _report(settings, {"queue": queue, "paused": True}, f"Paused queue {queue!r}")


@queue_group.command("unpause")
@click.argument("queue")
@json_option
@click.pass_context
def queue_unpause(ctx: click.Context, queue: str) -> None:
    """Let servers take tasks from QUEUE again."""
    settings = _settings(ctx)
    settings.inspector().unpause(queue)
    _report(settings, {"queue": queue, "paused": False}, f"Unpaused queue {queue!r}")


def _report(settings: Settings, data: dict[str, Any], line: str) -> None:
    if settings.json:
        emit_json(data)
    else:
        click.echo(line)


# -- tasks ------------------------------------------------------------------------------


@inspect_cli.group("task")
def task_group() -> None:
    """List, show, retry, archive, delete and cancel tasks."""


def _undecodable_row(task: TaskDetails, width: int) -> list[Any]:
    return [Text(task.id), Text("(undecodable)"), Text(cell_text(task.decode_error, CELL_WIDTH)),
            *([""] * (width - 3))]


def _list_rows(state: str, tasks: list[TaskDetails], now: float) -> tuple[list[str], list[list[Any]]]:
    columns = ["ID", "Type", "Payload"]
    extra: list[str] = {
        "pending": ["Waiting", "Retried"],
        "active": ["Lease"],
        "scheduled": ["Process at", "Process in"],
        "retry": ["Next retry", "Retried", "Last error", "Last failed"],
        "archived": ["Archived at", "Retried", "Last error"],
        "completed": ["Completed at", "Expires in", "Result"],
        "aggregating": ["Group", "Added"],
    }[state]
    columns += extra
    rows: list[list[Any]] = []
    for t in tasks:
        if not t.decodable:
            rows.append(_undecodable_row(t, len(columns)))
            continue
        row: list[Any] = [Text(t.id), Text(t.type), Text(cell_bytes(t.payload))]
        retried = f"{t.retried}/{t.max_retry}"
        if state == "pending":
            since = t.pending_since_ns / 1e9 if t.pending_since_ns else None
            row += [format_duration(now - since) if since else "", retried]
        elif state == "active":
            if t.lease_expiry is None:
                lease = "none"
            elif t.is_orphaned:
                lease = f"expired {format_ago(t.lease_expiry, now)} (orphaned)"
            else:
                lease = f"expires {format_in(t.lease_expiry, now)}"
            row += [lease]
        elif state == "scheduled":
            row += [format_time(t.next_process_at), format_in(t.next_process_at, now)]
        elif state == "retry":
            row += [format_in(t.next_process_at, now), retried, Text(cell_text(t.last_error)),
                    format_time(t.last_failed_at)]
        elif state == "archived":
            row += [format_time(t.score), retried, Text(cell_text(t.last_error))]
        elif state == "completed":
            row += [format_time(t.completed_at), format_in(t.score, now), Text(cell_bytes(t.result))]
        else:
            row += [Text(t.group), format_time(t.score)]
        rows.append(row)
    return columns, rows


@task_group.command("ls")
@click.argument("queue")
@click.option("--state", "-s", required=True, type=click.Choice(STATES), help="Task state.")
@click.option("--page", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--size", default=DEFAULT_PAGE_SIZE, show_default=True, type=click.IntRange(min=1))
@click.option("--group", "-g", default=None, help="Group (required for aggregating).")
@json_option
@click.pass_context
def task_ls(ctx: click.Context, queue: str, state: str, page: int, size: int,
            group: str | None) -> None:
    """One page of QUEUE's tasks in a state (oldest first)."""
    settings = _settings(ctx)
    now = time.time()
    result = settings.inspector().list_tasks(queue, state, page, size, group=group, now=now)
    if settings.json:
        emit_json(result.to_dict())
        return
    where = f"group {group!r} of queue {queue!r}" if group else f"queue {queue!r}"
    if not result.tasks:
        suffix = f" on page {page}" if result.total else ""
        click.echo(f"No {state} tasks in {where}{suffix} ({result.total} in total)"
                   if result.total else f"No {state} tasks in {where}")
        return
    columns, rows = _list_rows(state, result.tasks, now)
    first = (page - 1) * size + 1
    pages = -(-result.total // size)
    table = new_table(*columns)
    for row in rows:
        table.add_row(*row)
    out = console()
    print_table(out, table, f"{state.capitalize()} tasks in {where}: "
                f"{first}-{first + len(rows) - 1} of {result.total} (page {page} of {pages})")
    bad = sum(1 for t in result.tasks if not t.decodable)
    if bad:
        click.echo(f"{bad} task(s) have a msg that is not a valid asynq TaskMessage; "
                   "`task show` gives the details")


def _show_lines(t: TaskDetails, now: float) -> list[str]:
    lines = [f"Queue:        {t.queue}", f"ID:           {t.id}", f"State:        {t.state}"]
    if not t.decodable:
        lines.append(f"Undecodable:  {t.decode_error}")
    else:
        lines += [f"Type:         {t.type}", f"Retried:      {t.retried}/{t.max_retry}"]
    if t.state == "pending":
        next_at = "now"
    elif t.next_process_at:
        next_at = f"{format_time(t.next_process_at)} ({format_in(t.next_process_at, now)})"
    else:
        next_at = "n/a"
    lines.append(f"Next process: {next_at}")
    if t.state == "pending" and t.pending_since_ns:
        since = t.pending_since_ns / 1e9
        lines.append(f"Pending since: {format_time(since)} ({format_ago(since, now)})")
    if t.state == "active":
        if t.lease_expiry is None:
            lines.append("Lease:        none")
        else:
            status = "expired, orphaned" if t.is_orphaned else format_in(t.lease_expiry, now)
            lines.append(f"Lease:        until {format_time(t.lease_expiry)} ({status})")
    if t.state == "archived" and t.score:
        lines.append(f"Archived at:  {format_time(t.score)}")
    if t.decodable:
        lines.append(f"Timeout:      {format_duration(t.timeout) if t.timeout else 'none'}")
        lines.append(f"Deadline:     {format_time(t.deadline) if t.deadline else 'none'}")
        if t.retention:
            lines.append(f"Retention:    {format_duration(t.retention)}")
    if t.group:
        lines.append(f"Group:        {t.group}")
    if t.unique_key:
        lines.append(f"Unique key:   {t.unique_key}")
    for name, value in sorted(t.headers.items()):
        lines.append(f"Header:       {name}: {value}")
    if t.progress is not None:
        lines.append(f"Progress:     {progress_text(t.progress, now)}")
    if t.last_error or t.last_failed_at:
        lines.append(f"Last error:   {t.last_error}")
        lines.append(f"Last failed:  {format_time(t.last_failed_at)} "
                     f"({format_ago(t.last_failed_at, now)})")
    if t.completed_at:
        lines.append(f"Completed at: {format_time(t.completed_at)}")
    if t.state == "completed" and t.score:
        lines.append(f"Expires:      {format_time(t.score)} ({format_in(t.score, now)})")
    if t.decodable:
        kind, text = describe_bytes(t.payload)
        lines.append(f"Payload ({kind}):" + (f"\n{text}" if text else ""))
    if t.result is not None:
        kind, text = describe_bytes(t.result)
        lines.append(f"Result ({kind}):" + (f"\n{text}" if text else ""))
    return lines


@task_group.command("show")
@click.argument("queue")
@click.argument("task_id", metavar="ID")
@json_option
@click.pass_context
def task_show(ctx: click.Context, queue: str, task_id: str) -> None:
    """Everything about one task: payload, error, retries, result, next run."""
    settings = _settings(ctx)
    now = time.time()
    task = settings.inspector().get_task(queue, task_id, now=now)
    if settings.json:
        emit_json(task.to_dict())
    else:
        click.echo("\n".join(_show_lines(task, now)))


def _single_action(name: str, verb: str, state: str, summary: str):
    @task_group.command(name, help=summary)
    @click.argument("queue")
    @click.argument("task_id", metavar="ID")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, queue: str, task_id: str) -> None:
        settings = _settings(ctx)
        getattr(settings.inspector(), f"{verb}_task")(queue, task_id)
        line = {"retry": f"Task {task_id} of queue {queue!r} moved to pending",
                "archive": f"Task {task_id} of queue {queue!r} archived",
                "delete": f"Task {task_id} of queue {queue!r} deleted"}[verb]
        _report(settings, {"queue": queue, "id": task_id, "action": verb, "state": state}, line)

    return command


_single_action("retry", "retry", "pending",
               "Run task ID now: move it to pending (from scheduled, retry, archived, "
               "completed or aggregating).")
_single_action("archive", "archive", "archived", "Archive task ID (any state but active).")
_single_action("delete", "delete", "deleted",
               "Delete task ID (any state but active) and release its uniqueness lock.")


def _bulk_action(name: str, verb: str, states: tuple[str, ...], summary: str):
    @task_group.command(name, help=summary)
    @click.argument("queue")
    @click.option("--state", "-s", required=True, type=click.Choice(states))
    @click.option("--group", "-g", default=None,
                  help="Only this group (aggregating; default: every group).")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, queue: str, state: str, group: str | None) -> None:
        settings = _settings(ctx)
        method = {"retry": "run_all", "archive": "archive_all", "delete": "delete_all"}[verb]
        count = getattr(settings.inspector(), method)(queue, state, group=group)
        outcome = {"retry": "moved to pending", "archive": "archived", "delete": "deleted"}[verb]
        line = f"{count} {state} task(s) of queue {queue!r} {outcome}"
        _report(settings, {"queue": queue, "state": state, "group": group, "action": f"{verb}-all",
                           "count": count}, line)

    return command


_bulk_action("retry-all", "retry", RUN_ALL_STATES,
             "Move every task in a state to pending (scheduled, retry, archived, aggregating).")
_bulk_action("archive-all", "archive", ARCHIVE_ALL_STATES,
             "Archive every task in a state (pending, scheduled, retry, aggregating).")
_bulk_action("delete-all", "delete", DELETE_ALL_STATES,
             "Delete every task in a state (any but active).")


@task_group.command("cancel")
@click.argument("task_ids", metavar="ID...", nargs=-1, required=True)
@json_option
@click.pass_context
def task_cancel(ctx: click.Context, task_ids: tuple[str, ...]) -> None:
    """Ask the server running each task to cancel it (PUBLISH asynq:cancel)."""
    settings = _settings(ctx)
    inspector = settings.inspector()
    sent = [{"id": task_id, "receivers": inspector.cancel(task_id)} for task_id in task_ids]
    if settings.json:
        emit_json(sent)
        return
    for item in sent:
        n = item["receivers"]
        heard = "no server is subscribed to asynq:cancel" if n == 0 else f"received by {n} server(s)"
        click.echo(f"Sent a cancellation signal for task {item['id']} ({heard})")


# -- servers ----------------------------------------------------------------------------


@inspect_cli.group("server")
def server_group() -> None:
    """Servers (workers) heartbeating into this Redis."""


@server_group.command("ls")
@click.option("--workers", is_flag=True, help="Also list each server's in-flight tasks.")
@json_option
@click.pass_context
def server_ls(ctx: click.Context, workers: bool) -> None:
    """Live servers: host, pid, status, active/concurrency, queues, start time."""
    settings = _settings(ctx)
    now = time.time()
    servers = settings.inspector().servers(now=now)
    if settings.json:
        emit_json([s.to_dict() for s in servers])
        return
    out = console()
    if not servers:
        click.echo("No running servers")
        return
    table = new_table("Host", "PID", "Status", "Active", "Queues", "Started", "ID",
                      right=("PID", "Active"))
    for s in servers:
        table.add_row(Text(s.host), str(s.pid), Text(s.status),
                      f"{s.active_worker_count}/{s.concurrency}",
                      Text(format_queues(s.queues) + (" (strict)" if s.strict_priority else "")),
                      format_ago(s.started, now), Text(s.id))
    print_table(out, table)
    if not workers:
        return
    active = [(s, w) for s in servers for w in s.active_workers]
    if not active:
        click.echo("No active workers")
        return
    table = new_table("Server", "Task ID", "Type", "Queue", "Payload", "Started", "Deadline")
    for s, w in active:
        table.add_row(Text(f"{s.host}:{s.pid}"), Text(w.task_id), Text(w.task_type), Text(w.queue),
                      Text(cell_bytes(w.task_payload)), format_ago(w.started, now),
                      format_in(w.deadline, now))
    click.echo()
    print_table(out, table, "Active workers")


# the workflow commands live in their own module; importing it registers them
from agent.inspect import workflows as _workflows  # noqa: E402, F401
