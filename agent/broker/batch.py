"""ScriptBatcher: script calls issued in the same event-loop turn go out as one pipeline.

At high throughput many tasks finish together; writing their outcomes in one round trip
instead of one each is the difference between thousands and tens of thousands of tasks
per second. Each caller still gets its own result or error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from redis.exceptions import NoScriptError, ResponseError

from agent.broker.plans import ScriptCall, done_many_args
from agent.broker.scripts import fenced, source

log = logging.getLogger("agent.broker")


class ScriptBatcher:
    def __init__(self, client, max_batch: int = 512) -> None:
        self.client = client
        self.max_batch = max_batch
        # each call with where its result goes: a future (run) or a callback (submit)
        self._queue: list[tuple[ScriptCall, asyncio.Future | Callable[[object], None]]] = []
        self._flusher: asyncio.Task | None = None
        self._shas: dict[str, str] = {}

    async def run(self, call: ScriptCall):
        """Run ``call`` in this loop turn's pipeline; its result, or its error raised."""
        future = asyncio.get_running_loop().create_future()
        self._add(call, future)
        return await future

    def submit(self, call: ScriptCall, on_result: Callable[[object], None]) -> None:
        """``run`` without a future: ``on_result`` gets the result or the exception."""
        self._add(call, on_result)

    def _add(self, call: ScriptCall, sink) -> None:
        self._queue.append((call, sink))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _sha(self, name: str) -> str:
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = await self.client.script_load(source(name))
        return sha

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let every caller of this turn join the batch
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            try:
                results = await self.execute([call for call, _ in batch])
            except Exception as exc:  # noqa: BLE001 - the whole round trip failed: tell everyone
                results = [exc] * len(batch)
            for (_, sink), result in zip(batch, results, strict=True):
                _deliver(sink, result)

    async def execute(self, calls: Sequence[ScriptCall]) -> list:
        """Run these calls in one pipeline now; results (or exceptions) in order.

        Successes of the same queue are merged into one ``done_many`` / ``complete_many``
        call, which leaves the same state as the single scripts, at a fraction of the cost.
        """
        merged, fan_out = _merge_successes(calls)
        results = await self._execute(merged)
        out: list = [None] * len(calls)
        for merged_result, targets in zip(results, fan_out, strict=True):
            if len(targets) == 1 and not isinstance(targets[0], tuple):
                out[targets[0]] = merged_result
                continue
            for index, status in zip((t[0] for t in targets), merged_statuses(merged_result, len(targets)),
                                     strict=True):
                out[index] = status
        return out

    async def _execute(self, calls: Sequence[ScriptCall]) -> list:
        for name in {fenced(c)[0] for c in calls}:
            await self._sha(name)
        results = await self._pipeline(calls)
        if any(isinstance(r, NoScriptError) for r in results):
            # Redis lost its script cache (restart, SCRIPT FLUSH): load again, redo those.
            self._shas.clear()
            redo = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            for name in {fenced(calls[i])[0] for i in redo}:
                await self._sha(name)
            again = await self._pipeline([calls[i] for i in redo])
            for i, result in zip(redo, again, strict=True):
                results[i] = result
        return results

    async def _pipeline(self, calls: Sequence[ScriptCall]) -> list:
        async with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                script, args = fenced(call)
                pipe.evalsha(self._shas[script], len(call.keys), *call.keys, *args)
            return await pipe.execute(raise_on_error=False)


def _deliver(sink, result) -> None:
    if not isinstance(sink, asyncio.Future):
        try:
            sink(result)
        except Exception:  # noqa: BLE001 - one caller's bug must not stop the others' results
            log.exception("script result callback failed")
    elif sink.done():
        return
    elif isinstance(result, BaseException):
        sink.set_exception(result)
    else:
        sink.set_result(result)


_MERGEABLE = {"done": "done_many", "mark_complete": "complete_many"}


def _merge_successes(calls: Sequence[ScriptCall]) -> tuple[list[ScriptCall], list[list]]:
    """Group done / mark_complete calls by queue and day; keep every other call as is.

    Returns the calls to run and, for each, the indexes of the original calls it answers
    (a bare index for an unmerged call, ``(index,)`` tuples for a merged one)."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, call in enumerate(calls):
        if call.script in _MERGEABLE:
            day_key = call.keys[3] if call.script == "done" else call.keys[4]
            groups.setdefault((call.script, call.keys[0], day_key), []).append(i)
    merged: list[ScriptCall] = []
    fan_out: list[list] = []
    taken: set[int] = set()
    for (script, _, _), indexes in groups.items():
        if len(indexes) < 2:
            continue
        taken.update(indexes)
        merged.append(_merged_call(script, [calls[i] for i in indexes]))
        fan_out.append([(i,) for i in indexes])
    for i, call in enumerate(calls):
        if i not in taken:
            merged.append(call)
            fan_out.append([i])
    return merged, fan_out


def _merged_call(script: str, calls: list[ScriptCall]) -> ScriptCall:
    return replace(_merged(script, calls), fence=_earliest_fence(calls))


def _earliest_fence(calls: list[ScriptCall]) -> int | None:
    """A merged write is fenced by the earliest lease deadline among its tasks."""
    fences = [c.fence for c in calls]
    return None if any(f is None for f in fences) else min(f for f in fences if f is not None)


def _merged(script: str, calls: list[ScriptCall]) -> ScriptCall:
    first = calls[0]
    if script == "done":
        # done: keys active, lease, task, day, total[, unique]; args id, expiry, maxint
        task_id = first.args[0]
        prefix = first.keys[2][: len(first.keys[2]) - len(task_id)]
        tasks = [(call.args[0], call.keys[5] if len(call.keys) > 5 else "") for call in calls]
        return ScriptCall("done_many", [first.keys[0], first.keys[1], first.keys[3], first.keys[4]],
                          done_many_args(first.args[1], prefix, tasks))
    # mark_complete: keys active, lease, completed, task, day, total[, unique];
    # args id, stats expiry, expire at, msg, maxint[, result]
    task_id = first.args[0]
    prefix = first.keys[3][: len(first.keys[3]) - len(task_id)]
    args = [first.args[1], first.args[4], prefix]
    for call in calls:
        has_result = len(call.args) > 5
        args += [call.args[0], call.args[2], call.args[3], "1" if has_result else "0",
                 call.args[5] if has_result else "", call.keys[6] if len(call.keys) > 6 else ""]
    return ScriptCall("complete_many",
                      [first.keys[0], first.keys[1], first.keys[2], first.keys[4], first.keys[5]], args)


def merged_statuses(result, count: int) -> list:
    """A merged call's per-task statuses (or its error, for each) as the single scripts
    would have answered."""
    if isinstance(result, Exception):
        return [result] * count
    out = []
    for status in result:
        if status == 1:
            out.append(b"OK")
        elif status == -1:
            out.append(ResponseError("INTERNAL"))
        else:
            out.append(ResponseError("NOT FOUND"))
    return out
