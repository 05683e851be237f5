-- A failure retried at once: the recovery of a task whose fenced lease expired (its agent
-- died or stalled; the task already waited for the recovery). The same bookkeeping as
-- retry.lua (new msg with retried + 1 and the error, processed and failed counted), but the
-- task goes straight back to pending, at the head (next out, as asynq's requeue puts it: it
-- was at the head when it was taken), instead of waiting in the retry set for a backoff.
-- KEYS[1] task hash, KEYS[2] active, KEYS[3] lease, KEYS[4] pending,
-- KEYS[5] processed:<date>, KEYS[6] failed:<date>, KEYS[7] processed, KEYS[8] failed
-- ARGV[1] task id, ARGV[2] new msg, ARGV[3] now (unix ns), ARGV[4] daily stats expiry,
-- ARGV[5] max int64
if redis.call("LREM", KEYS[2], -1, ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
if redis.call("ZREM", KEYS[3], ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
redis.call("RPUSH", KEYS[4], ARGV[1])
redis.call("HSET", KEYS[1], "msg", ARGV[2], "state", "pending", "pending_since", ARGV[3])
redis.call("HDEL", KEYS[1], "fenced_lease")
if redis.call("INCR", KEYS[5]) == 1 then
    redis.call("EXPIREAT", KEYS[5], ARGV[4])
end
if redis.call("INCR", KEYS[6]) == 1 then
    redis.call("EXPIREAT", KEYS[6], ARGV[4])
end
if redis.call("GET", KEYS[7]) == ARGV[5] then
    redis.call("SET", KEYS[7], 1)
    redis.call("SET", KEYS[8], 1)
else
    redis.call("INCR", KEYS[7])
    redis.call("INCR", KEYS[8])
end
return redis.status_reply("OK")
