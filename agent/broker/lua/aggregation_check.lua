-- Stage a group's tasks for aggregation when asynq's rules say it is time (aggregationCheckCmd).
-- KEYS[1] group zset g:<group>, KEYS[2] the new set g:<group>:<set id>, KEYS[3] aggregation_sets,
-- KEYS[4] groups set
-- ARGV[1] max size (0: off), ARGV[2] max delay (s, 0: off), ARGV[3] grace period (s),
-- ARGV[4] the set's deadline (unix s), ARGV[5] now (unix s), ARGV[6] group name
-- Returns 1 when a set was made (the oldest max size members, or all), else 0.
local size = redis.call("ZCARD", KEYS[1])
if size == 0 then
    return 0
end
local max_size = tonumber(ARGV[1])
local now = tonumber(ARGV[5])
local due = max_size > 0 and size >= max_size
if not due and tonumber(ARGV[2]) > 0 then
    local oldest = redis.call("ZRANGE", KEYS[1], 0, 0, "WITHSCORES")
    due = tonumber(oldest[2]) <= now - tonumber(ARGV[2])
end
if not due then
    local newest = redis.call("ZRANGE", KEYS[1], -1, -1, "WITHSCORES")
    due = tonumber(newest[2]) <= now - tonumber(ARGV[3])
end
if not due then
    return 0
end
local last = max_size > 0 and max_size - 1 or -1
local members = redis.call("ZRANGE", KEYS[1], 0, last, "WITHSCORES")
for i = 1, #members, 2 do
    redis.call("ZADD", KEYS[2], members[i + 1], members[i])
end
redis.call("ZREMRANGEBYRANK", KEYS[1], 0, last)
redis.call("ZADD", KEYS[3], ARGV[4], KEYS[2])
if redis.call("ZCARD", KEYS[1]) == 0 then
    redis.call("SREM", KEYS[4], ARGV[6])
end
return 1
