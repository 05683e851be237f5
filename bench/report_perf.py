"""Issue 20's figures in the report: one_shot by fork and exec, the Go-default producer
against our client, and the fleet of agents on one Redis (targets, lines and tables)."""

from __future__ import annotations


def _get(node, *path):
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _n(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)


def targets(runs: dict, check) -> None:
    """Adds issue 20's rows through ``check(name, measured, limit, ok_if, unit="")``."""
    go = _get(runs, "go_producer", "median_go_over_ours")
    if go is not None:
        check("Go-default producer drain / our client's (|1 - ratio|)", round(abs(1 - go), 3), 0.1, "<=")
    check("mixed child: sync no-op / sync-only child", _get(runs, "mixed", "mixed_sync_over_sync_only"), 0.9, ">=")
    check("mixed child: async no-op / sync-only child", _get(runs, "mixed", "mixed_async_over_sync_only"), 0.75, ">=")
    fleet = runs.get("fleet") or {}
    ratio = _get(fleet, "redis_cpu_per_task_32_over_1")
    if ratio is not None:
        check("fleet: Redis CPU per task, 32 agents / 1", ratio, 1.3, "<=")
    worst = max((row.get("background_commands_per_s_per_agent") or 0
                 for row in fleet.get("rows", []) if row.get("agents", 0) > 1), default=None)
    if worst is not None:
        check("fleet: background Redis commands/s per agent (worst count)", round(worst, 1), 50, "<=")


def lines(runs: dict) -> list[str]:
    """One_shot and Go-producer summaries (plain text, for the console and the markdown)."""
    out = []
    one = runs.get("one_shot") or {}
    if one.get("exec"):
        out.append(f"one_shot by fork: {_n(one.get('tasks_per_s'))} tasks/s, by exec "
                   f"{_n(one['exec'].get('tasks_per_s'))} tasks/s in the same run: "
                   f"{one.get('fork_over_exec')}x (CPU per task: agent {_n(one.get('agent_cpu_us_per_task'))} µs + "
                   f"zygote and forks {_n(one.get('children_cpu_us_per_task'))} µs, against "
                   f"{_n(one['exec'].get('agent_cpu_us_per_task'))} + {_n(one['exec'].get('children_cpu_us_per_task'))} µs)")
    go = runs.get("go_producer") or {}
    if go.get("go"):
        msg = go.get("message") or {}
        out.append(f"Go-default producer ({go['n']:,} tasks, {go['pairs']} pairs, {go.get('config')}): "
                   + ", ".join(f"{_n(g['tasks_per_s'])}/s vs ours {_n(o['tasks_per_s'])}/s"
                               for g, o in zip(go["go"], go["ours"], strict=False))
                   + f"; median Go / ours {go.get('median_go_over_ours')}; message bytes identical to "
                   f"our client's: {msg.get('same_bytes')}")
    mixed = runs.get("mixed") or {}
    if mixed.get("sync_only"):
        out.append(f"mixed child ({mixed['n']:,} no-op tasks, {mixed['rounds']} round(s), {mixed.get('config')}): "
                   + "; ".join(f"sync-only {_n(o['tasks_per_s'])}/s, mixed sync {_n(s['tasks_per_s'])}/s, "
                               f"mixed async {_n(a['tasks_per_s'])}/s"
                               for o, s, a in zip(mixed["sync_only"], mixed["mixed_sync"], mixed["mixed_async"],
                                                  strict=False))
                   + f"; medians: sync {mixed.get('mixed_sync_over_sync_only')}, "
                   f"async {mixed.get('mixed_async_over_sync_only')} of the sync-only child")
    return out


FLEET_COLUMNS = ("agents", "tasks/s", "Redis util", "Redis µs/task", "Redis cmds/task", "bg cmds/s/agent",
                 "bg Redis ms/s/agent", "idle cmds/s/agent", "idle Redis ms/s/agent", "connections", "p50 ms",
                 "p99 ms")


def fleet_rows(runs: dict) -> list[list[str]]:
    rows = []
    for row in (runs.get("fleet") or {}).get("rows", []):
        if "error" in row:
            rows.append([_n(row.get("agents")), "error", *["-"] * (len(FLEET_COLUMNS) - 2)])
            continue
        rows.append([_n(row["agents"]), _n(row["tasks_per_s"]), _n(row["redis_cpu_util"], 2),
                     _n(row["redis_cpu_us_per_task"], 1), _n(row.get("redis_commands_per_task"), 1),
                     _n(row["background_commands_per_s_per_agent"], 1),
                     _n(row.get("background_redis_cpu_ms_per_s_per_agent"), 2),
                     _n(row.get("idle_background_commands_per_s_per_agent"), 1),
                     _n(row.get("idle_redis_cpu_ms_per_s_per_agent"), 2),
                     f"{_n(row['connections'])} ({_n(row['connections_per_agent'], 1)}/agent)",
                     _n(row["latency_p50_ms"], 1), _n(row["latency_p99_ms"], 1)])
    return rows


def markdown(runs: dict) -> list[str]:
    out = [f"{line}. " for line in lines(runs)]
    rows = fleet_rows(runs)
    if rows:
        fleet = runs["fleet"]
        out += ["", f"Fleet on one Redis ({fleet.get('description', '')}):", "",
                "| " + " | ".join(FLEET_COLUMNS) + " |", "|" + " ---: |" * len(FLEET_COLUMNS)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
    return out
