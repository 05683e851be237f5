"""ScriptBatcher: script calls issued in the same event-loop turn go out as one pipeline.

At high throughput many tasks finish together; writing their outcomes in one round trip
instead of one each is the difference between thousands and tens of thousands of tasks
per second. Each caller still gets its own result or error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from redis.exceptions import NoScriptError

from agent.broker.plans import ScriptCall
from agent.broker.scripts import source


class ScriptBatcher:
    def __init__(self, client, max_batch: int = 512) -> None:
        self.client = client
        self.max_batch = max_batch
        self._queue: list[tuple[ScriptCall, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._shas: dict[str, str] = {}

    async def run(self, call: ScriptCall):
        future = asyncio.get_running_loop().create_future()
        self._queue.append((call, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

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
                results = await self._execute([call for call, _ in batch])
            except Exception as exc:  # noqa: BLE001 - the whole round trip failed: tell everyone
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def execute(self, calls: Sequence[ScriptCall]) -> list:
        """Run these calls in one pipeline now; results (or exceptions) in order."""
        return await self._execute(calls)

    async def _execute(self, calls: Sequence[ScriptCall]) -> list:
        for name in {c.script for c in calls}:
            await self._sha(name)
        results = await self._pipeline(calls)
        if any(isinstance(r, NoScriptError) for r in results):
            # Redis lost its script cache (restart, SCRIPT FLUSH): load again, redo those.
            self._shas.clear()
            redo = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            for name in {calls[i].script for i in redo}:
                await self._sha(name)
            again = await self._pipeline([calls[i] for i in redo])
            for i, result in zip(redo, again, strict=True):
                results[i] = result
        return results

    async def _pipeline(self, calls: Sequence[ScriptCall]) -> list:
        async with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(self._shas[call.script], len(call.keys), *call.keys, *call.args)
            return await pipe.execute(raise_on_error=False)
