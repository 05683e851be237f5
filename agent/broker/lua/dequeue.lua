-- Move up to ARGV[3] tasks from pending to active and the lease set, atomically.
-- KEYS[1] pending, KEYS[2] paused, KEYS[3] active, KEYS[4] lease
-- ARGV[1] lease expiry (unix s), ARGV[2] task key prefix, ARGV[3] max tasks
-- Returns a flat list {id1, msg1, id2, msg2, ...}. An ID whose hash has no msg is an
-- orphan: asynq leaves it in active forever; we drop it from active and return it with
-- msg = false so the caller can report it.
-- Each task's hash gets fenced_lease = the lease score: its holder writes only through the
-- lease fence, so recovery may take it soon after the lease (list_lease_expired.lua).
if redis.call("EXISTS", KEYS[2]) == 1 then
    return {}
end
local out = {}
for _ = 1, tonumber(ARGV[3]) do
    local id = redis.call("RPOPLPUSH", KEYS[1], KEYS[3])
    if not id then
        break
    end
    local key = ARGV[2] .. id
    local msg = redis.call("HGET", key, "msg")
    if msg then
        redis.call("HSET", key, "state", "active", "fenced_lease", ARGV[1])
        redis.call("HDEL", key, "pending_since")
        redis.call("ZADD", KEYS[4], ARGV[1], id)
    else
        redis.call("LREM", KEYS[3], 1, id)
    end
    out[#out + 1] = id
    out[#out + 1] = msg
end
return out
