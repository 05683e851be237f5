"""Where a workflow lives in Redis, beside the asynq keys, and the scripts that move it.

Every key of one workflow carries the hash tag ``{<workflow id>}``: a workflow is in one
Cluster slot and each script below is atomic. The index of unfinished workflows
(``rundown:workflows``) is the one key outside it, written separately.

Node states: ``waiting`` (for its dependencies) -> ``ready`` (to be enqueued) ->
``enqueued`` -> ``succeeded`` | ``failed`` (its task was archived; a retry that succeeds
makes it ``succeeded``). A workflow is ``running``, ``failed`` (a node failed: its
descendants wait) or ``succeeded``.
"""

from __future__ import annotations

INDEX = "rundown:workflows"  #: ZSET of unfinished workflow IDs, score = creation time
HEADER_WORKFLOW = "rundown-workflow"  #: task header naming a step's workflow
HEADER_NODE = "rundown-node"  #: task header naming the step
KEEP_FINISHED = 7 * 86400  #: seconds a finished workflow's state stays readable
_PARTS = ("meta", "nodes", "state", "remaining", "results", "errors")


def workflow_keys(workflow_id: str) -> list[str]:
    """meta, nodes, state, remaining, results, errors (the order every script takes)."""
    return [f"rundown:wf:{{{workflow_id}}}:{part}" for part in _PARTS]


def node_task_id(workflow_id: str, node: str) -> str:
    """A step's task ID: the same whoever enqueues it, so a second enqueue is refused."""
    return f"{workflow_id}:{node}"


CREATE = """
-- KEYS: meta nodes state remaining results errors
-- ARGV[1] total, ARGV[2] now, then triples: node id, spec JSON, unfinished dependencies
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
redis.call("HSET", KEYS[1], "state", "running", "total", ARGV[1], "done", 0, "failed", 0,
           "created", ARGV[2])
for i = 3, #ARGV, 3 do
    local node, deps = ARGV[i], tonumber(ARGV[i + 2])
    redis.call("HSET", KEYS[2], node, ARGV[i + 1])
    if deps == 0 then
        local spec = cjson.decode(ARGV[i + 1])
        redis.call("HSET", KEYS[3], node, spec["external"] and "enqueued" or "ready")
    else
        redis.call("HSET", KEYS[3], node, "waiting")
        redis.call("HSET", KEYS[4], node, deps)
    end
end
return 1
"""

# Returns {workflow state, {node, spec, {dependency results}}...}: the successors now ready
# (also on a repeated call, while they are still ready: a re-drive enqueues them again,
# idempotently). ARGV[4]: seconds to keep a finished workflow.
COMPLETE = """
-- KEYS: meta nodes state remaining results errors; ARGV[1] node, ARGV[2] result, ARGV[3] now
local st = redis.call("HGET", KEYS[3], ARGV[1])
if not st then return {"missing"} end
local spec = cjson.decode(redis.call("HGET", KEYS[2], ARGV[1]))
if st ~= "succeeded" and st ~= "waiting" then
    redis.call("HSET", KEYS[3], ARGV[1], "succeeded")
    redis.call("HSET", KEYS[5], ARGV[1], ARGV[2])
    if st == "failed" then
        redis.call("HINCRBY", KEYS[1], "failed", -1)
        redis.call("HDEL", KEYS[6], ARGV[1])
    end
    local done = redis.call("HINCRBY", KEYS[1], "done", 1)
    for _, child in ipairs(spec["children"]) do
        if redis.call("HINCRBY", KEYS[4], child, -1) == 0 then
            redis.call("HSET", KEYS[3], child, "ready")
        end
    end
    if done == tonumber(redis.call("HGET", KEYS[1], "total")) then
        redis.call("HSET", KEYS[1], "state", "succeeded", "finished", ARGV[3])
        for i = 1, #KEYS do redis.call("EXPIRE", KEYS[i], ARGV[4]) end
    elseif tonumber(redis.call("HGET", KEYS[1], "failed")) == 0 then
        redis.call("HSET", KEYS[1], "state", "running")
    end
end
-- each ready successor with its spec and the results of its dependencies (one round trip)
local out = {redis.call("HGET", KEYS[1], "state")}
for _, child in ipairs(spec["children"]) do
    if redis.call("HGET", KEYS[3], child) == "ready" then
        local child_spec = redis.call("HGET", KEYS[2], child)
        local deps = cjson.decode(child_spec)["deps"]
        local results = {}
        if #deps > 0 then results = redis.call("HMGET", KEYS[5], unpack(deps)) end
        table.insert(out, {child, child_spec, results})
    end
end
return out
"""

FAIL = """
-- KEYS: meta nodes state remaining results errors; ARGV[1] node, ARGV[2] error
local st = redis.call("HGET", KEYS[3], ARGV[1])
if st ~= "enqueued" and st ~= "ready" and st ~= "failed" then return 0 end
redis.call("HSET", KEYS[6], ARGV[1], ARGV[2])
if st ~= "failed" then
    redis.call("HSET", KEYS[3], ARGV[1], "failed")
    redis.call("HINCRBY", KEYS[1], "failed", 1)
    redis.call("HSET", KEYS[1], "state", "failed")
end
return 1
"""

MARK_ENQUEUED = """
-- KEYS: meta nodes state ...; ARGV: nodes whose task is now enqueued
for i = 1, #ARGV do
    if redis.call("HGET", KEYS[3], ARGV[i]) == "ready" then
        redis.call("HSET", KEYS[3], ARGV[i], "enqueued")
    end
end
return 1
"""
