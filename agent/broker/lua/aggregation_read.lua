-- The messages of an aggregation set, oldest first (readAggregationSetCmd), and its deadline.
-- KEYS[1] the set, KEYS[2] aggregation_sets; ARGV[1] task key prefix asynq:{q}:t:
-- Returns {deadline or false, msg, msg, ...}; a member without a hash gives false.
local out = {redis.call("ZSCORE", KEYS[2], KEYS[1])}
for _, id in ipairs(redis.call("ZRANGE", KEYS[1], 0, -1)) do
    table.insert(out, redis.call("HGET", ARGV[1] .. id, "msg"))
end
return out
