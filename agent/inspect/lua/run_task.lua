-- Move one task to pending so it runs next in FIFO order (asynq Inspector: RunTask).
-- retried and error_msg are kept; pending_since is not set (as asynq).
-- KEYS[1] task hash, KEYS[2] pending, KEYS[3] groups
-- ARGV[1] task id, ARGV[2] queue key prefix, ARGV[3] group key prefix
-- Returns 1 when moved, 0 if the task does not exist, -1 if it is active,
-- -2 if it is already pending; an error if its container does not hold it.
if redis.call("EXISTS", KEYS[1]) == 0 then
    return 0
end
local state, group = unpack(redis.call("HMGET", KEYS[1], "state", "group"))
if state == "active" then
    return -1
end
if state == "pending" then
    return -2
end
if not state then
    return redis.error_reply("task hash has no state field: " .. KEYS[1])
end
if state == "aggregating" then
    local gkey = ARGV[3] .. tostring(group)
    if redis.call("ZREM", gkey, ARGV[1]) == 0 then
        return redis.error_reply("task id not found in " .. gkey)
    end
    if redis.call("ZCARD", gkey) == 0 then
        redis.call("SREM", KEYS[3], group)
    end
elseif redis.call("ZREM", ARGV[2] .. state, ARGV[1]) == 0 then
    return redis.error_reply("task id not found in " .. ARGV[2] .. state)
end
redis.call("LPUSH", KEYS[2], ARGV[1])
redis.call("HSET", KEYS[1], "state", "pending")
return 1
