"""``rundown-agent inspect workflow show ID``: a workflow and each step's state."""

from __future__ import annotations

import json
import time

import click
from rich.text import Text

from agent.inspect.cli import (
    InspectGroup,
    _fail,
    _settings,
    cell_text,
    console,
    emit_json,
    format_ago,
    inspect_cli,
    json_option,
)
from agent.inspect.tables import new_table, print_table


@inspect_cli.group("workflow", cls=InspectGroup)
def workflow_group() -> None:
    """Workflows (chains, groups, depends_on) kept beside the asynq keys."""


@workflow_group.command("show")
@click.argument("workflow_id", metavar="ID")
@json_option
@click.pass_context
def workflow_show(ctx: click.Context, workflow_id: str) -> None:
    """The workflow's state and each step: its task, state, dependencies, result or error."""
    from agent.workflows.engine import WorkflowEngine, run_sync

    settings = _settings(ctx)
    view = run_sync(WorkflowEngine(settings.inspector().redis).show(workflow_id))
    if view is None:
        _fail(ctx, f"no workflow {workflow_id!r} (unknown, or finished more than 7 days ago)")
        return
    if settings.json:
        emit_json(view)
        return
    now = time.time()
    finished = f", finished {format_ago(view['finished'], now)}" if "finished" in view else ""
    click.echo(f"Workflow {view['id']}: {view['state']}, {view['done']}/{view['total']} steps done"
               f"{', ' + str(view['failed']) + ' failed' if view['failed'] else ''}; "
               f"created {format_ago(view['created'], now)}{finished}")
    table = new_table("Step", "State", "Type", "Queue", "Task ID", "After", "Result / error",
                      right=("Step",))
    for step in view["steps"]:
        outcome = step.get("error") or ("" if "result" not in step else json.dumps(step["result"]))
        table.add_row(step["node"], Text(step["state"]), Text(step["type"] or "(depends_on)"),
                      Text(step["queue"]), Text(step["task_id"]), ",".join(step["after"]) or "-",
                      Text(cell_text(outcome)))
    print_table(console(), table)
