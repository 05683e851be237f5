-- Failure with no retries left (or SkipRetry): move the task to the archive and trim it.
-- LREM count -1: from the oldest end of active, where finishing tasks are, stopping at the
-- ID (asynq's 0 scans the whole list, which all agents of the queue share; an ID is in it once).
-- KEYS[1] task hash, KEYS[2] active, KEYS[3] lease, KEYS[4] archived,
-- KEYS[5] processed:<date>, KEYS[6] failed:<date>, KEYS[7] processed, KEYS[8] failed
-- ARGV[1] task id, ARGV[2] new msg, ARGV[3] now (unix s), ARGV[4] cutoff (now - 90 days),
-- ARGV[5] max archive size, ARGV[6] daily stats expiry, ARGV[7] max int64,
-- ARGV[8] task key prefix, ARGV[9] (optional) the original msg of a malformed task, kept
-- in the field rundown_raw_msg (agent/broker/malformed.py) while ARGV[2] stands in for it
if redis.call("LREM", KEYS[2], -1, ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
if redis.call("ZREM", KEYS[3], ARGV[1]) == 0 then
    return redis.error_reply("NOT FOUND")
end
redis.call("ZADD", KEYS[4], ARGV[3], ARGV[1])
local too_old = redis.call("ZRANGE", KEYS[4], "-inf", ARGV[4], "BYSCORE")
for _, id in ipairs(too_old) do
    redis.call("DEL", ARGV[8] .. id)
    redis.call("ZREM", KEYS[4], id)
end
local too_many = redis.call("ZRANGE", KEYS[4], 0, -tonumber(ARGV[5]))
for _, id in ipairs(too_many) do
    redis.call("DEL", ARGV[8] .. id)
    redis.call("ZREM", KEYS[4], id)
end
redis.call("HSET", KEYS[1], "msg", ARGV[2], "state", "archived")
if ARGV[9] then
    redis.call("HSET", KEYS[1], "rundown_raw_msg", ARGV[9])
end
redis.call("HDEL", KEYS[1], "fenced_lease")
if redis.call("INCR", KEYS[5]) == 1 then
    redis.call("EXPIREAT", KEYS[5], ARGV[6])
end
if redis.call("INCR", KEYS[6]) == 1 then
    redis.call("EXPIREAT", KEYS[6], ARGV[6])
end
if redis.call("GET", KEYS[7]) == ARGV[7] then
    redis.call("SET", KEYS[7], 1)
    redis.call("SET", KEYS[8], 1)
else
    redis.call("INCR", KEYS[7])
    redis.call("INCR", KEYS[8])
end
return redis.status_reply("OK")
