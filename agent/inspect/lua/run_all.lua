-- Move every task of a ZSET (scheduled, retry, archived, or a group) to pending
-- (asynq Inspector: RunAll*Tasks / RunAllAggregatingTasks). pending_since is not set.
-- KEYS[1] the source zset, KEYS[2] pending, KEYS[3] groups
-- ARGV[1] task key prefix, ARGV[2] group name when KEYS[1] is a group, else ""
-- Returns the number of tasks moved.
local ids = redis.call("ZRANGE", KEYS[1], 0, -1)
for _, id in ipairs(ids) do
    redis.call("LPUSH", KEYS[2], id)
    redis.call("HSET", ARGV[1] .. id, "state", "pending")
end
redis.call("DEL", KEYS[1])
if ARGV[2] ~= "" then
    redis.call("SREM", KEYS[3], ARGV[2])
end
return #ids
