-- Failure with retries left: schedule the task in the retry set.
-- LREM count -1: from the oldest end of active, where finishing tasks are, stopping at the
-- ID (asynq's 0 scans the whole list, which all agents of the queue share; an ID is in it once).
-- KEYS[1] task hash, KEYS[2] active, KEYS[3] lease, KEYS[4] retry,
-- KEYS[5] processed:<date>, KEYS[6] failed:<date>, KEYS[7] processed, KEYS[8] failed
-- ARGV[1] task id, ARGV[2] new msg, ARGV[3] retry at (unix s), ARGV[4] daily stats expiry,
-- ARGV[5] is failure ("1" counts it), ARGV[6] max int64
if redis.call("LREM", KEYS[2], -1, ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
if redis.call("ZREM", KEYS[3], ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
redis.call("ZADD", KEYS[4], ARGV[3], ARGV[1])
redis.call("HSET", KEYS[1], "msg", ARGV[2], "state", "retry")
redis.call("HDEL", KEYS[1], "fenced_lease")
if tonumber(ARGV[5]) == 1 then
    if redis.call("INCR", KEYS[5]) == 1 then
        redis.call("EXPIREAT", KEYS[5], ARGV[4])
    end
    if redis.call("INCR", KEYS[6]) == 1 then
        redis.call("EXPIREAT", KEYS[6], ARGV[4])
    end
    if redis.call("GET", KEYS[7]) == ARGV[6] then
        redis.call("SET", KEYS[7], 1)
        redis.call("SET", KEYS[8], 1)
    else
        redis.call("INCR", KEYS[7])
        redis.call("INCR", KEYS[8])
    end
end
return redis.status_reply("OK")
