-- Delete one task that is not running (asynq Inspector: DeleteTask): remove it from its
-- container, release its uniqueness lock if the lock still names it, delete the hash.
-- KEYS[1] task hash, KEYS[2] groups
-- ARGV[1] task id, ARGV[2] queue key prefix, ARGV[3] group key prefix
-- Returns 1 when deleted, 0 if the task does not exist, -1 if it is active;
-- an error if its container does not hold it.
if redis.call("EXISTS", KEYS[1]) == 0 then
    return 0
end
local state, group, lock = unpack(redis.call("HMGET", KEYS[1], "state", "group", "unique_key"))
if state == "active" then
    return -1
end
if not state then
    return redis.error_reply("task hash has no state field: " .. KEYS[1])
end
if state == "pending" then
    if redis.call("LREM", ARGV[2] .. "pending", 0, ARGV[1]) == 0 then
        return redis.error_reply("task id not found in " .. ARGV[2] .. "pending")
    end
elseif state == "aggregating" then
    local gkey = ARGV[3] .. tostring(group)
    if redis.call("ZREM", gkey, ARGV[1]) == 0 then
        return redis.error_reply("task id not found in " .. gkey)
    end
    if redis.call("ZCARD", gkey) == 0 then
        redis.call("SREM", KEYS[2], group)
    end
elseif redis.call("ZREM", ARGV[2] .. state, ARGV[1]) == 0 then
    return redis.error_reply("task id not found in " .. ARGV[2] .. state)
end
if lock and lock ~= "" and redis.call("GET", lock) == ARGV[1] then
    redis.call("DEL", lock)
end
return redis.call("DEL", KEYS[1])
