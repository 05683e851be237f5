-- One page of a task LIST (pending or active), read with the task hashes.
-- KEYS[1] the list, KEYS[2] the lease zset (or any key, for pending)
-- ARGV[1] start, ARGV[2] stop (LRANGE indexes), ARGV[3] task key prefix,
-- ARGV[4] "lease" to return lease expiries (active), anything else for pending_since
-- Returns {list length, id, msg, result, extra, id, msg, result, extra, ...}; a missing
-- field is false. extra is the lease expiry (active) or pending_since (pending).
local out = {redis.call("LLEN", KEYS[1])}
for _, id in ipairs(redis.call("LRANGE", KEYS[1], ARGV[1], ARGV[2])) do
    local key = ARGV[3] .. id
    local msg, result, since = unpack(redis.call("HMGET", key, "msg", "result", "pending_since"))
    local extra = since
    if ARGV[4] == "lease" then
        extra = redis.call("ZSCORE", KEYS[2], id)
    end
    out[#out + 1] = id
    out[#out + 1] = msg
    out[#out + 1] = result
    out[#out + 1] = extra
end
return out
