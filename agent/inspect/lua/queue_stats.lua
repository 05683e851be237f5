-- Counts and counters of one queue, read atomically (asynq Inspector: CurrentStats).
-- KEYS[1] pending, KEYS[2] active, KEYS[3] scheduled, KEYS[4] retry, KEYS[5] archived,
-- KEYS[6] completed, KEYS[7] processed:<today>, KEYS[8] failed:<today>, KEYS[9] processed,
-- KEYS[10] failed, KEYS[11] paused, KEYS[12] groups
-- ARGV[1] task key prefix, ARGV[2] group key prefix
-- Returns, in this order: the six container sizes, the four counters as stored (false if
-- missing), paused (0/1), pending_since of the oldest pending task (false if none or
-- unset), the number of groups and the number of aggregating tasks.
local out = {}
local pending = redis.call("LLEN", KEYS[1])
out[1] = pending
out[2] = redis.call("LLEN", KEYS[2])
for i = 3, 6 do
    out[i] = redis.call("ZCARD", KEYS[i])
end
for i = 7, 10 do
    out[i] = redis.call("GET", KEYS[i])
end
out[11] = redis.call("EXISTS", KEYS[11])
out[12] = false
if pending > 0 then
    local oldest = redis.call("LINDEX", KEYS[1], -1)
    if oldest then
        out[12] = redis.call("HGET", ARGV[1] .. oldest, "pending_since")
    end
end
local names = redis.call("SMEMBERS", KEYS[12])
local aggregating = 0
for _, name in ipairs(names) do
    aggregating = aggregating + redis.call("ZCARD", ARGV[2] .. name)
end
out[13] = #names
out[14] = aggregating
return out
