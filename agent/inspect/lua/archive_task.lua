-- Archive one task that is not running (asynq Inspector: ArchiveTask). msg is kept as is.
-- The archive is then trimmed by age and size; like asynq's Inspector, the trimmed
-- members' hashes are left in place.
-- KEYS[1] task hash, KEYS[2] archived, KEYS[3] groups
-- ARGV[1] task id, ARGV[2] now (unix s), ARGV[3] cutoff (now - 90 days),
-- ARGV[4] max archive size, ARGV[5] queue key prefix, ARGV[6] group key prefix
-- Returns 1 when archived, 0 if the task does not exist, -1 if already archived,
-- -2 if active; an error if its container does not hold it.
if redis.call("EXISTS", KEYS[1]) == 0 then
    return 0
end
local state, group = unpack(redis.call("HMGET", KEYS[1], "state", "group"))
if state == "active" then
    return -2
end
if state == "archived" then
    return -1
end
if not state then
    return redis.error_reply("task hash has no state field: " .. KEYS[1])
end
if state == "pending" then
    if redis.call("LREM", ARGV[5] .. "pending", 1, ARGV[1]) == 0 then
        return redis.error_reply("task id not found in " .. ARGV[5] .. "pending")
    end
elseif state == "aggregating" then
    local gkey = ARGV[6] .. tostring(group)
    if redis.call("ZREM", gkey, ARGV[1]) == 0 then
        return redis.error_reply("task id not found in " .. gkey)
    end
    if redis.call("ZCARD", gkey) == 0 then
        redis.call("SREM", KEYS[3], group)
    end
elseif redis.call("ZREM", ARGV[5] .. state, ARGV[1]) == 0 then
    return redis.error_reply("task id not found in " .. ARGV[5] .. state)
end
redis.call("ZADD", KEYS[2], ARGV[2], ARGV[1])
redis.call("HSET", KEYS[1], "state", "archived")
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", ARGV[3])
redis.call("ZREMRANGEBYRANK", KEYS[2], 0, -tonumber(ARGV[4]))
return 1
