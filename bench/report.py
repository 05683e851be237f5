"""Targets (issue 7), ratios, the printed tables and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import report_perf


def _get(results: dict, *path, default=None):
    node = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


# Sections and their labels; the keys of runs before the capacity model (drain_c10,
# drain_c128, drain_c128_async) are still read, for --markdown of an older results file.
DRAINS = (("drain_defaults", "defaults, sync no-op"), ("drain_c10", "sync no-op"),
          ("drain_short", "short-task config, sync no-op"), ("drain_c128", "sync no-op"),
          ("drain_async", "async no-op"), ("drain_c128_async", "async no-op"),
          ("scale_pending", "many pending"), ("scale_queues", "50 weighted sub-queues"),
          ("scale_queues_parents", "50 parent queues"), ("scale_payload", "100 KB payloads"),
          ("one_shot", "one_shot"), ("one_shot.exec", "one_shot"))
HEADLINE = ("drain_short", "drain_c128")
REALISTIC_LABELS = {"sync_10ms_16": "sync 10 ms", "sync_10ms_128": "sync 10 ms",
                    "async_50ms_16": "async 50 ms", "async_50ms_128": "async 50 ms"}


def headline(runs: dict) -> dict:
    """The short-task drain (``drain_c128`` in results from before the capacity model)."""
    return next((runs[k] for k in HEADLINE if isinstance(runs.get(k), dict)), {})


def config_label(d: dict) -> str:
    """The configuration a run states (results from before the capacity model: concurrency)."""
    return d.get("config") or f"concurrency {d.get('concurrency', '?')} (tasks held)"


def ratios(results: dict) -> dict:
    runs = results["runs"]
    agent = headline(runs).get("tasks_per_s")
    out: dict = {}
    if not agent:
        return out
    floor = _get(runs, "floor", "best", "tasks_per_s")
    if floor:
        out["agent_over_floor"] = round(agent / floor, 3)
    for peer in ("dramatiq", "arq"):
        rate = _get(runs, "peers", peer, "tasks_per_s")
        if rate:
            out[f"agent_over_{peer}"] = round(agent / rate, 2)
    for name in ("scale_pending", "scale_queues"):
        rate = _get(runs, name, "tasks_per_s")
        # against the single-queue drains just before and after it when the run has them
        # (the same minutes), else against the short-task drain
        refs = [r["tasks_per_s"] for r in _get(runs, name, "single_queue_reference") or [] if r.get("tasks_per_s")]
        if rate:
            out[f"{name}_over_single_queue"] = round(rate / (sum(refs) / len(refs) if refs else agent), 3)
    defaults = _get(runs, "drain_defaults", "tasks_per_s")
    if defaults:
        out["defaults_over_short"] = round(defaults / agent, 3)
    return out


def targets(results: dict) -> list[dict]:
    runs, r = results["runs"], results.get("ratios", {})
    rows: list[dict] = []

    def check(name: str, measured, limit, ok_if: str, unit: str = "") -> None:
        if measured is None:
            rows.append({"target": name, "measured": None, "limit": limit, "ok": None, "unit": unit})
            return
        ok = measured >= limit if ok_if == ">=" else measured <= limit
        rows.append({"target": name, "measured": measured, "limit": f"{ok_if} {limit}", "ok": ok, "unit": unit})

    short = headline(runs)
    check("short-task drain / floor", r.get("agent_over_floor"), 0.6, ">=")
    check("short-task drain / Dramatiq", r.get("agent_over_dramatiq"), 10, ">=")
    check("short-task drain tasks/s (2-core class)", short.get("tasks_per_s"), 50_000, ">=")
    for producer in ("client", "bare"):
        check(f"idle latency p50, {producer}", _get(runs, "idle_latency", f"latency_{producer}", "p50_ms"), 2.0, "<=", "ms")
        check(f"idle latency p99, {producer}", _get(runs, "idle_latency", f"latency_{producer}", "p99_ms"), 5.0, "<=", "ms")
    check("idle agent CPU", _get(runs, "idle_latency", "idle", "agent_cpu_percent"), 1.0, "<=", "% of a core")
    check("agent CPU per task, short-task drain", short.get("agent_cpu_us_per_task"), 15.0, "<=", "µs")
    rss = [v for v in (_get(runs, k, "agent_peak_rss_mb") for k in
                       ("drain_defaults", "drain_short", "drain_c10", "drain_c128", "scale_pending",
                        "scale_queues")) if v]
    check("agent peak RSS (small payloads)", max(rss) if rss else None, 80.0, "<=", "MB")
    check("many pending / single queue", r.get("scale_pending_over_single_queue"), 0.9, ">=")
    check("50 queues / single queue", r.get("scale_queues_over_single_queue"), 0.9, ">=")
    wc = _get(runs, "scale_queues", "weight_check")
    if wc:
        rel = abs(wc["high_weight_share_observed"] - wc["high_weight_share_expected"]) / wc["high_weight_share_expected"]
        check("weights honoured over a backlog (rel. error of high-weight share)", round(rel, 3), 0.15, "<=")
    check("one_shot tasks/s (fork; issue 20: >= 10x the ~61 of exec)", _get(runs, "one_shot", "tasks_per_s"),
          600, ">=")
    check("one_shot fork / exec, same run", _get(runs, "one_shot", "fork_over_exec"), 10, ">=")
    report_perf.targets(runs, check)
    check("dashboard: first search page over 1,000,000 tasks (worst case)",
          _get(runs, "dashboard", "search", "worst_s"), 2.0, "<=", "s")
    check("dashboard: bulk retry of a 10,000-task failure group", _get(runs, "dashboard", "bulk_retry", "seconds"),
          5.0, "<=", "s")
    check("dashboard open during a c=128 drain (rate with / without)",
          _get(runs, "dashboard", "drain_cost", "ratio_median"), 0.95, ">=")
    check("dashboard server's CPU / the c=128 drain's CPU", _get(runs, "dashboard", "drain_cost",
                                                                 "server_cpu_share_max"), 0.05, "<=")
    check("unlimited queue beside a throttled one / no limits (issue 16, paired)",
          _get(runs, "flow", "median_ratio"), 0.90, ">=")
    return rows


def _fmt(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_report(results: dict, console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 190))
    runs = results["runs"]
    meta = results["meta"]
    m = meta["machine"]
    console.print(f"[bold]rundown-agent benchmark[/bold] ({meta['mode']}) {meta['date']} - "
                  f"{m['cpu_model']}, {m['usable_cpus']} CPUs, {m['memory_gb']} GB, {m['os']}, "
                  f"Python {m['python']}, {meta.get('redis_server', '')}")
    code = meta.get("code", {})
    console.print(f"code: commit {code.get('commit') or '?'}"
                  + (f" + {len(code['dirty'])} changed file(s)" if code.get("dirty") else "")
                  + f", agent+task_sdk source hash {code.get('source_hash', '?')}")

    t = Table(title="Drains (one agent, venv none; concurrency = handlers running at once)")
    for col in ("run: configuration", "N", "tasks/s", "agent µs/task", "child µs/task", "redis µs/task",
                "agent util", "redis util", "others util", "agent RSS MB (peak)", "child RSS MB"):
        t.add_column(col, justify="right" if col != "run: configuration" else "left")
    for key, what in DRAINS:
        d = _get(runs, *key.split("."))
        if not d:
            continue
        label = f"{what}; {config_label(d)}"
        if "error" in d:
            t.add_row(label, "-", "[red]error[/red]", *["-"] * 8)
            continue
        t.add_row(label, _fmt(d["n"]), _fmt(d["tasks_per_s"]), _fmt(d["agent_cpu_us_per_task"], 1),
                  _fmt(d["children_cpu_us_per_task"], 1), _fmt(d["redis_cpu_us_per_task"], 1),
                  _fmt(d["agent_cpu_util"], 2), _fmt(d["redis_cpu_util"], 2),
                  _fmt(d.get("other_processes_cpu_util"), 2),
                  f"{_fmt(d['agent_rss_mb'], 1)} ({_fmt(d['agent_peak_rss_mb'], 1)})", _fmt(d["child_rss_mb"], 1))
    console.print(t)

    t = Table(title="Floor and peers (same machine, same run)")
    for col in ("system", "config", "N", "tasks/s", "CPU µs/task", "redis µs/task", "redis util",
                "rundown-agent short-task / this"):
        t.add_column(col, justify="left" if col in ("system", "config") else "right")
    agent = headline(runs).get("tasks_per_s")
    floor = runs.get("floor") or {}
    for name, d in floor.items():
        if name == "best" or not isinstance(d, dict) or "tasks_per_s" not in d:
            continue
        what = {"done": "one done call per task", "done_many": "merged outcomes (done_many)",
                "child": "done_many + one task_sdk child"}.get(name, name)
        t.add_row(f"floor ({name})", f"{what}; {d['lanes']} lanes x {d['batch']} IDs", _fmt(d["n"]),
                  _fmt(d["tasks_per_s"]), _fmt(d.get("client_cpu_us_per_task"), 1)
                  + (f" (+{_fmt(d['child_cpu_us_per_task'], 1)} child)" if d.get("child_cpu_us_per_task") else ""),
                  _fmt(d.get("redis_cpu_us_per_task"), 1), _fmt(d["redis_cpu_util"], 2),
                  _fmt(agent / d["tasks_per_s"], 2) if agent else "-")
    for name, d in (runs.get("peers") or {}).items():
        if not isinstance(d, dict) or "tasks_per_s" not in d:
            continue
        t.add_row(name, d["config"], _fmt(d["n"]), _fmt(d["tasks_per_s"]), _fmt(d["cpu_us_per_task"], 0),
                  _fmt(d.get("redis_cpu_us_per_task"), 1), _fmt(d.get("redis_cpu_util"), 2),
                  _fmt(agent / d["tasks_per_s"], 1) if agent else "-")
    console.print(t)

    rows = realistic_rows(runs)
    if rows:
        t = Table(title="Realistic handlers: efficiency = tasks/s / (running handlers / handler time)")
        for col in ("handler", "running", "system", "configuration", "N", "tasks/s", "ideal", "efficiency",
                    "CPU µs/task", "redis µs/task", "others util"):
            t.add_column(col, justify="left" if col in ("handler", "system", "configuration") else "right")
        for row in rows:
            t.add_row(*row)
        console.print(t)

    lat = runs.get("idle_latency") or {}
    if "latency_client" in lat:
        t = Table(title=f"Idle agent ({lat.get('config', 'after the headline drain')}): enqueue -> completed "
                        f"(agent idle CPU {lat['idle']['agent_cpu_percent']}% of a core)")
        for col in ("producer", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms", "lost",
                    "enqueue call p50", "written->active p50", "active->done p50"):
            t.add_column(col, justify="left" if col == "producer" else "right")
        for key, label in (("latency_client", "our client"), ("latency_bare", "bare asynq keys (redis-py)")):
            d = lat[key]
            t.add_row(label, _fmt(d["samples"]), _fmt(d["p50_ms"], 2), _fmt(d["p90_ms"], 2),
                      _fmt(d["p99_ms"], 2), _fmt(d["max_ms"], 2), _fmt(d["lost"]),
                      _fmt(d.get("enqueue_call_p50_ms"), 2), _fmt(d.get("pending_to_active_p50_ms"), 2),
                      _fmt(d.get("active_to_done_p50_ms"), 2))
        console.print(t)

    enq = runs.get("enqueue") or {}
    one = runs.get("one_shot") or {}
    extras = []
    if enq:
        extras.append(f"enqueue: {_fmt(enq.get('single_per_s'))}/s single, "
                      f"{_fmt(enq.get('batched_per_s'))}/s batched ({enq.get('batch')} per round trip)")
    if one.get("startup"):
        s = one["startup"]
        extras.append(f"one_shot start cost (wall, median): python -S {s['python_no_site_ms']} ms, "
                      f"python {s['python_bare_ms']} ms, + import asyncio {s.get('python_import_asyncio_ms')} ms, "
                      f"+ import task_sdk "
                      f"{s['python_import_task_sdk_ms']} ms, child start+exit {s['one_shot_child_start_exit_ms']} ms")
    pl = runs.get("scale_payload") or {}
    if pl.get("mb_per_s"):
        extras.append(f"100 KB payloads: {pl['mb_per_s']} MB/s through the agent")
    wc = _get(runs, "scale_queues", "weight_check")
    if wc:
        extras.append(f"50 queues: high-weight half did {wc['high_weight_share_observed']:.1%} of the first "
                      f"{wc['at_processed']:,} tasks (weights ask {wc['high_weight_share_expected']:.1%})")
    extras += report_perf.lines(runs)
    for line in extras:
        console.print("  " + line)
    fleet = report_perf.fleet_rows(runs)
    if fleet:
        t = Table(title=f"Fleet on one Redis ({runs['fleet'].get('description', '')})")
        for col in report_perf.FLEET_COLUMNS:
            t.add_column(col, justify="right")
        for row in fleet:
            t.add_row(*row)
        console.print(t)

    t = Table(title="Targets (issue 7)")
    for col in ("target", "measured", "limit", ""):
        t.add_column(col)
    for row in results.get("targets", []):
        mark = "-" if row["ok"] is None else ("[green]met[/green]" if row["ok"] else "[red]missed[/red]")
        t.add_row(row["target"], f"{_fmt(row['measured'], 3 if isinstance(row['measured'], float) and row['measured'] < 10 else 0)} {row['unit']}".strip(),
                  str(row["limit"]), mark)
    console.print(t)
    costs = _get(runs, "micro", "costs")
    if costs:
        console.print("[bold]unit costs in this interpreter[/bold] (µs per operation): " + "; ".join(
            f"{k} {v}" for k, v in costs.items()))
    cmds = headline(runs).get("redis_commands_per_task")
    if cmds:
        console.print("[bold]Redis per task, short-task drain[/bold]: " + ", ".join(
            f"{k} {v['calls']} ({v['redis_us']} µs)" for k, v in cmds.items()
            if isinstance(v, dict) and v["calls"] >= 0.01)
            + f"; {cmds.get('net_in_bytes')} B in, {cmds.get('net_out_bytes')} B out")
    prof = runs.get("profile") or {}
    for who in ("agent", "child"):
        p = prof.get(who)
        if p and p.get("self"):
            console.print(f"[bold]profile ({prof.get('tool')}) {who}[/bold], {p.get('samples', '')} samples, top self time:")
            for row in p["self"][:12]:
                console.print(f"  {row['percent']:5.1f}%  {row['function']}")
            own = [row for row in p.get("inclusive", []) if "agent/" in row["function"]
                   or "task_sdk/" in row["function"]]
            if own:
                console.print("  inclusive (project code):")
                for row in own[:12]:
                    console.print(f"  {row['percent']:5.1f}%  {row['function']}")
        if p and p.get("per_task"):
            under = (prof.get("drain_under_profiler") or {}).get("tasks_per_s")
            console.print(f"[bold]system calls per task ({who})[/bold], drain at {under} tasks/s: "
                          + ", ".join(f"{k} {v}" for k, v in p["per_task"].items()))
    for section, message in results.get("errors", {}).items():
        console.print(f"[red]error in {section}:[/red] {message}")


def realistic_rows(runs: dict) -> list[list[str]]:
    """The realistic section as table cells: one row per system and case."""
    out = []
    for case, row in (runs.get("realistic") or {}).items():
        if not isinstance(row, dict):
            continue
        what = f"{REALISTIC_LABELS.get(case, case)}"
        for system in ("agent", "dramatiq", "arq"):
            d = row.get(system)
            if d is None:
                continue
            if "error" in d:
                out.append([what, _fmt(row["running_handlers"]), system, "-", _fmt(row["n"]), "error",
                            _fmt(row["ideal_tasks_per_s"]), "-", "-", "-", "-"])
                continue
            if system == "agent":
                config = config_label(d)
                cpu = _fmt(d["agent_cpu_us_per_task"], 0) + f" + {_fmt(d['children_cpu_us_per_task'], 0)} child"
            else:
                config, cpu = d["config"], _fmt(d["cpu_us_per_task"], 0)
            out.append([what, _fmt(row["running_handlers"]), system, config, _fmt(d["n"]), _fmt(d["tasks_per_s"]),
                        _fmt(row["ideal_tasks_per_s"]), _fmt(d.get("efficiency"), 2), cpu,
                        _fmt(d.get("redis_cpu_us_per_task"), 1), _fmt(d.get("other_processes_cpu_util"), 2)])
    return out


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def markdown(results: dict) -> str:
    """The README's tables, from a results JSON (``python -m bench --markdown FILE``)."""
    runs, meta, m = results["runs"], results["meta"], results["meta"]["machine"]
    code = meta.get("code", {})
    agent = headline(runs).get("tasks_per_s")
    out = [f"Measured {meta['date']} ({meta['mode']} mode, {meta.get('seconds', '?')} s), "
           f"{m['cpu_model']}, {m['usable_cpus']} CPUs, {m['memory_gb']} GB RAM, {m['os']}, "
           f"Python {m['python']}, {meta.get('redis_server', '')}; code at commit "
           f"{code.get('commit', '?')}" + (" (with uncommitted changes)" if code.get("dirty") else "")
           + f", source hash {code.get('source_hash', '?')}. A shared machine: `others` is the "
           "CPU other processes used meanwhile (1.0 = one core).", ""]
    out += ["| run: configuration | N | tasks/s | agent CPU µs/task | child µs/task | Redis µs/task | agent util | Redis util | others | agent RSS MB (peak) | child RSS MB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key, what in DRAINS:
        d = _get(runs, *key.split("."))
        if not d or "tasks_per_s" not in d:
            continue
        label = f"{what}; {config_label(d)}"
        if key in HEADLINE:
            label = f"**{label}**"
        out.append(f"| {label} | {_fmt(d['n'])} | {_fmt(d['tasks_per_s'])} | {_fmt(d['agent_cpu_us_per_task'], 1)} | "
                   f"{_fmt(d['children_cpu_us_per_task'], 1)} | {_fmt(d['redis_cpu_us_per_task'], 1)} | "
                   f"{_fmt(d['agent_cpu_util'], 2)} | {_fmt(d['redis_cpu_util'], 2)} | "
                   f"{_fmt(d.get('other_processes_cpu_util'), 2)} | {_fmt(d['agent_rss_mb'], 1)} ({_fmt(d['agent_peak_rss_mb'], 1)}) | "
                   f"{_fmt(d['child_rss_mb'], 1)} |")
    out += ["", "| system | config | N | tasks/s | CPU µs/task | Redis µs/task | agent short-task / this |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, d in (runs.get("floor") or {}).items():
        if name == "best" or "tasks_per_s" not in d:
            continue
        cpu = _fmt(d.get("client_cpu_us_per_task"), 1)
        if d.get("child_cpu_us_per_task"):
            cpu += f" + {_fmt(d['child_cpu_us_per_task'], 1)} child"
        out.append(f"| floor `{name}` | bare loop, {d['lanes']} lanes x {d['batch']} IDs | {_fmt(d['n'])} | "
                   f"{_fmt(d['tasks_per_s'])} | {cpu} | {_fmt(d['redis_cpu_us_per_task'], 1)} | "
                   f"{_fmt(agent / d['tasks_per_s'], 2) if agent else '-'} |")
    for name, d in (runs.get("peers") or {}).items():
        if "tasks_per_s" not in d:
            continue
        out.append(f"| {name} | {d['config']} | {_fmt(d['n'])} | {_fmt(d['tasks_per_s'])} | "
                   f"{_fmt(d['cpu_us_per_task'], 0)} | {_fmt(d.get('redis_cpu_us_per_task'), 1)} | "
                   f"{_fmt(agent / d['tasks_per_s'], 1) if agent else '-'} |")
    rows = realistic_rows(runs)
    if rows:
        out += ["", "Realistic handlers (efficiency = tasks/s / (running handlers / handler time)):", "",
                "| handler | running | system | configuration | N | tasks/s | ideal | efficiency | CPU µs/task | Redis µs/task | others |",
                "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        out += ["| " + " | ".join(row) + " |" for row in rows]
    lat = runs.get("idle_latency") or {}
    if "latency_client" in lat:
        out += ["", f"Idle agent ({lat.get('config', 'after the headline drain')}): "
                f"{lat['idle']['agent_cpu_percent']} % of a core over {lat['idle']['seconds']} s. "
                "Enqueue -> completed (ms):", "",
                "| producer | samples | p50 | p90 | p99 | max | enqueue call p50 | written -> active p50 | active -> done p50 |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for key, label in (("latency_client", "our client"), ("latency_bare", "bare asynq keys (redis-py)")):
            d = lat[key]
            out.append(f"| {label} | {d['samples']} | {d['p50_ms']:.2f} | {d['p90_ms']:.2f} | {d['p99_ms']:.2f} | "
                       f"{d['max_ms']:.2f} | {d.get('enqueue_call_p50_ms', 0):.2f} | "
                       f"{d.get('pending_to_active_p50_ms', 0):.2f} | {d.get('active_to_done_p50_ms', 0):.2f} |")
    enq = runs.get("enqueue") or {}
    one = runs.get("one_shot") or {}
    out.append("")
    reps = headline(runs).get("repetitions") or []
    if len(reps) > 1:
        out.append(f"The short-task drain ran {len(reps)} times (the table shows the median run): "
                   + ", ".join(f"{_fmt(r['tasks_per_s'])}/s at {r['agent_cpu_us_per_task']} µs"
                               for r in reps) + ". ")
    if enq:
        out.append(f"Enqueue: {_fmt(enq.get('single_per_s'))}/s one at a time, {_fmt(enq.get('batched_per_s'))}/s "
                   f"batched ({enq.get('batch')} per round trip). ")
    if one.get("startup"):
        s = one["startup"]
        out.append(f"Interpreter start (wall, median): `python -S` {s['python_no_site_ms']} ms, `python` "
                   f"{s['python_bare_ms']} ms, `import asyncio` {s.get('python_import_asyncio_ms')} ms, "
                   f"`import task_sdk` {s['python_import_task_sdk_ms']} ms, the one_shot app's start and exit "
                   f"{s['one_shot_child_start_exit_ms']} ms. ")
    for name, label in (("scale_pending", "many pending"), ("scale_queues", "50 weighted sub-queues")):
        refs = _get(runs, name, "single_queue_reference")
        if refs:
            out.append(f"The {label} run against single-queue drains just before and after it: "
                       f"{_fmt(_get(runs, name, 'tasks_per_s'))}/s against "
                       + " and ".join(f"{_fmt(r['tasks_per_s'])}/s" for r in refs)
                       + f" ({_get(results, 'ratios', name + '_over_single_queue')}). ")
    wc = _get(runs, "scale_queues", "weight_check")
    if wc:
        out.append(f"Weights over a backlog: the higher-weight half of the 50 queues did "
                   f"{wc['high_weight_share_observed']:.1%} of the first {wc['at_processed']:,} tasks "
                   f"(the weights ask {wc['high_weight_share_expected']:.1%}).")
    out += report_perf.markdown(runs)
    out += ["", "| target (issue 7) | measured | limit | |", "| --- | ---: | --- | --- |"]
    for row in results.get("targets", []):
        mark = "-" if row["ok"] is None else ("met" if row["ok"] else "**missed**")
        value = row["measured"]
        shown = "-" if value is None else (f"{value:,.3f}" if isinstance(value, float) and value < 10 else f"{value:,.0f}")
        out.append(f"| {row['target']} | {shown} {row['unit']} | {row['limit']} | {mark} |")
    return "\n".join(out) + "\n"
