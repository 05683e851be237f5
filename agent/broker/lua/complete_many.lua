-- Success with retention, for many tasks of one queue in one call (same end state as
-- LREM count -1: from the oldest end of active, where finishing tasks are, stopping at the
-- ID (asynq's 0 scans the whole list, which all agents of the queue share; an ID is in it once).
-- running mark_complete.lua for each).
-- KEYS[1] active, KEYS[2] lease, KEYS[3] completed, KEYS[4] processed:<date>, KEYS[5] processed
-- ARGV[1] daily stats expiry, ARGV[2] max int64, ARGV[3] task key prefix,
-- then groups of 6: task id, expiry (now + retention), msg with completed_at,
-- "1" if a result follows else "0", result, unique lock key ("" when none)
-- Returns one status per task: 1 done, 0 not found, -1 already in completed.
local status = {}
local done = 0
for i = 4, #ARGV, 6 do
    local id = ARGV[i]
    local ok = 0
    if redis.call("LREM", KEYS[1], -1, id) ~= 0 and redis.call("ZREM", KEYS[2], id) ~= 0 then
        if redis.call("ZADD", KEYS[3], ARGV[i + 1], id) ~= 1 then
            ok = -1
        else
            local key = ARGV[3] .. id
            redis.call("HSET", key, "msg", ARGV[i + 2], "state", "completed")
            redis.call("HDEL", key, "fenced_lease")
            if ARGV[i + 3] == "1" then
                redis.call("HSET", key, "result", ARGV[i + 4])
            end
            local lock = ARGV[i + 5]
            if lock ~= "" and redis.call("GET", lock) == id then
                redis.call("DEL", lock)
            end
            ok = 1
            done = done + 1
        end
    end
    status[#status + 1] = ok
end
if done > 0 then
    if redis.call("INCRBY", KEYS[4], done) == done then
        redis.call("EXPIREAT", KEYS[4], ARGV[1])
    end
    if redis.call("GET", KEYS[5]) == ARGV[2] then
        redis.call("SET", KEYS[5], done)
    else
        redis.call("INCRBY", KEYS[5], done)
    end
end
return status
