-- Move due tasks from the scheduled or retry set to pending (or to their group).
-- KEYS[1] scheduled or retry zset, KEYS[2] pending list
-- ARGV[1] now (unix s), ARGV[2] task key prefix, ARGV[3] now (unix ns),
-- ARGV[4] group key prefix, ARGV[5] batch size
-- Returns the number of tasks moved.
local ids = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[5]))
for _, id in ipairs(ids) do
    local key = ARGV[2] .. id
    local group = redis.call("HGET", key, "group")
    if group and group ~= "" then
        redis.call("ZADD", ARGV[4] .. group, ARGV[1], id)
        redis.call("ZREM", KEYS[1], id)
        redis.call("HSET", key, "state", "aggregating")
    else
        redis.call("LPUSH", KEYS[2], id)
        redis.call("ZREM", KEYS[1], id)
        redis.call("HSET", key, "state", "pending", "pending_since", ARGV[3])
    end
end
return #ids
