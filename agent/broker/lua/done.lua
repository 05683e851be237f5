-- Success with no retention: delete the task, release its unique lock, count it.
-- LREM count -1: from the oldest end of active, where finishing tasks are, stopping at the
-- ID (asynq's 0 scans the whole list, which all agents of the queue share; an ID is in it once).
-- KEYS[1] active, KEYS[2] lease, KEYS[3] task hash, KEYS[4] processed:<date>,
-- KEYS[5] processed, KEYS[6] unique lock (optional)
-- ARGV[1] task id, ARGV[2] daily stats expiry (unix s), ARGV[3] max int64
if redis.call("LREM", KEYS[1], -1, ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
if redis.call("ZREM", KEYS[2], ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
if redis.call("DEL", KEYS[3]) == 0 then
    return redis.error_reply("NOT FOUND")
end
if redis.call("INCR", KEYS[4]) == 1 then
    redis.call("EXPIREAT", KEYS[4], ARGV[2])
end
if redis.call("GET", KEYS[5]) == ARGV[3] then
    redis.call("SET", KEYS[5], 1)
else
    redis.call("INCR", KEYS[5])
end
if KEYS[6] and redis.call("GET", KEYS[6]) == ARGV[1] then
    redis.call("DEL", KEYS[6])
end
return redis.status_reply("OK")
