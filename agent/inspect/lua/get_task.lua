-- Read one task: its whole hash plus where it sits.
-- KEYS[1] task hash, KEYS[2] lease zset
-- ARGV[1] task id, ARGV[2] queue key prefix
-- Returns false if the hash does not exist; otherwise {hash as a flat field/value list,
-- score in the container named by the hash's state (scheduled, retry, archived,
-- completed) or false, lease expiry or false}.
local fields = redis.call("HGETALL", KEYS[1])
if #fields == 0 then
    return false
end
local state = redis.call("HGET", KEYS[1], "state")
local score = false
if state == "scheduled" or state == "retry" or state == "archived" or state == "completed" then
    score = redis.call("ZSCORE", ARGV[2] .. state, ARGV[1])
end
return {fields, score, redis.call("ZSCORE", KEYS[2], ARGV[1])}
