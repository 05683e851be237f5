-- Enqueue the aggregated task and delete the set it was made from, in one step, only while the
-- set is still registered (not reclaimed meanwhile: then another run makes the task).
-- asynq enqueues, then deletes the set (deleteAggregationSetCmd) in a second call.
-- KEYS[1] the set, KEYS[2] aggregation_sets, KEYS[3] new task hash, KEYS[4] pending list
-- ARGV[1] task key prefix, ARGV[2] new msg, ARGV[3] new task id, ARGV[4] now (unix ns)
-- Returns 1 when enqueued, 0 when the set is no longer registered, -1 when the ID exists.
if not redis.call("ZSCORE", KEYS[2], KEYS[1]) then
    return 0
end
if redis.call("EXISTS", KEYS[3]) == 1 then
    return -1
end
for _, id in ipairs(redis.call("ZRANGE", KEYS[1], 0, -1)) do
    redis.call("DEL", ARGV[1] .. id)
end
redis.call("DEL", KEYS[1])
redis.call("ZREM", KEYS[2], KEYS[1])
redis.call("HSET", KEYS[3], "msg", ARGV[2], "state", "pending", "pending_since", ARGV[4])
redis.call("LPUSH", KEYS[4], ARGV[3])
return 1
