-- Delete every task of a container and the container itself (asynq Inspector:
-- DeleteAll*Tasks / DeleteAllAggregatingTasks).
-- KEYS[1] the source, KEYS[2] groups
-- ARGV[1] task key prefix, ARGV[2] "list" or "zset",
-- ARGV[3] "1" to release each task's uniqueness lock (scheduled, retry, archived,
-- completed) or "0" (pending and aggregating: asynq leaves the locks to their TTL),
-- ARGV[4] group name when KEYS[1] is a group, else ""
-- Returns the number of tasks deleted.
local ids
if ARGV[2] == "list" then
    ids = redis.call("LRANGE", KEYS[1], 0, -1)
else
    ids = redis.call("ZRANGE", KEYS[1], 0, -1)
end
for _, id in ipairs(ids) do
    local key = ARGV[1] .. id
    if ARGV[3] == "1" then
        local lock = redis.call("HGET", key, "unique_key")
        if lock and lock ~= "" and redis.call("GET", lock) == id then
            redis.call("DEL", lock)
        end
    end
    redis.call("DEL", key)
end
if ARGV[4] ~= "" then
    redis.call("SREM", KEYS[2], ARGV[4])
end
redis.call("DEL", KEYS[1])
return #ids
