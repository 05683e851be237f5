-- Put an active task back at the head of pending (next to be dequeued), retries unchanged.
-- KEYS[1] active, KEYS[2] lease, KEYS[3] pending, KEYS[4] task hash
-- ARGV[1] task id
if redis.call("LREM", KEYS[1], 0, ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
if redis.call("ZREM", KEYS[2], ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
redis.call("RPUSH", KEYS[3], ARGV[1])
redis.call("HSET", KEYS[4], "state", "pending")
return redis.status_reply("OK")
