-- Success with retention: keep the task as completed until its retention ends.
-- LREM count -1: from the oldest end of active, where finishing tasks are, stopping at the
-- ID (asynq's 0 scans the whole list, which all agents of the queue share; an ID is in it once).
-- KEYS[1] active, KEYS[2] lease, KEYS[3] completed, KEYS[4] task hash,
-- KEYS[5] processed:<date>, KEYS[6] processed, KEYS[7] unique lock (optional)
-- ARGV[1] task id, ARGV[2] daily stats expiry, ARGV[3] expiry (now + retention, unix s),
-- ARGV[4] msg with completed_at, ARGV[5] max int64, ARGV[6] result (optional)
if redis.call("LREM", KEYS[1], -1, ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
if redis.call("ZREM", KEYS[2], ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
if redis.call("ZADD", KEYS[3], ARGV[3], ARGV[1]) ~= 1 then
    return redis.error_reply("INTERNAL")
end
redis.call("HSET", KEYS[4], "msg", ARGV[4], "state", "completed")
redis.call("HDEL", KEYS[4], "fenced_lease")
if ARGV[6] then
    redis.call("HSET", KEYS[4], "result", ARGV[6])
end
if redis.call("INCR", KEYS[5]) == 1 then
    redis.call("EXPIREAT", KEYS[5], ARGV[2])
end
if redis.call("GET", KEYS[6]) == ARGV[5] then
    redis.call("SET", KEYS[6], 1)
else
    redis.call("INCR", KEYS[6])
end
if KEYS[7] and redis.call("GET", KEYS[7]) == ARGV[1] then
    redis.call("DEL", KEYS[7])
end
return redis.status_reply("OK")
