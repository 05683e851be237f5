-- Put an active task back at the head of pending (next to be dequeued), retries unchanged.
-- LREM count -1: from the oldest end of active, where finishing tasks are, stopping at the
-- ID (asynq's 0 scans the whole list, which all agents of the queue share; an ID is in it once).
-- KEYS[1] active, KEYS[2] lease, KEYS[3] pending, KEYS[4] task hash
-- ARGV[1] task id
if redis.call("LREM", KEYS[1], -1, ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
if redis.call("ZREM", KEYS[2], ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
redis.call("RPUSH", KEYS[3], ARGV[1])
redis.call("HSET", KEYS[4], "state", "pending")
redis.call("HDEL", KEYS[4], "fenced_lease")
return redis.status_reply("OK")
