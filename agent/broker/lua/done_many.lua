-- Success with no retention, for many tasks of one queue in one call (same end state as
-- LREM count -1: from the oldest end of active, where finishing tasks are, stopping at the
-- ID (asynq's 0 scans the whole list, which all agents of the queue share; an ID is in it once).
-- running done.lua for each).
-- KEYS[1] active, KEYS[2] lease, KEYS[3] processed:<date>, KEYS[4] processed
-- ARGV[1] daily stats expiry, ARGV[2] max int64, ARGV[3] task key prefix, ARGV[4] n,
-- then n task IDs, then (position among the IDs, unique lock key) for the tasks that have a
-- unique lock (most have none: one argument per task is the common case)
-- Returns one status per task: 1 done, 0 not found (not active, or no lease, or no hash).
local n = tonumber(ARGV[4])
local locks = {}
for j = 5 + n, #ARGV, 2 do
    locks[tonumber(ARGV[j])] = ARGV[j + 1]
end
local status = {}
local done = 0
for i = 1, n do
    local id, lock = ARGV[4 + i], locks[i]
    local ok = 0
    if redis.call("LREM", KEYS[1], -1, id) ~= 0 and redis.call("ZREM", KEYS[2], id) ~= 0
        and redis.call("DEL", ARGV[3] .. id) ~= 0 then
        ok = 1
        done = done + 1
        if lock and redis.call("GET", lock) == id then
            redis.call("DEL", lock)
        end
    end
    status[#status + 1] = ok
end
if done > 0 then
    if redis.call("INCRBY", KEYS[3], done) == done then
        redis.call("EXPIREAT", KEYS[3], ARGV[1])
    end
    if redis.call("GET", KEYS[4]) == ARGV[2] then
        redis.call("SET", KEYS[4], done)
    else
        redis.call("INCRBY", KEYS[4], done)
    end
end
return status
