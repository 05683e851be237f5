-- Put the members of aggregation sets whose deadline passed back into their group
-- (reclaimStateAggregationSetsCmd), and the group back into groups, which asynq leaves out
-- (its aggregator would not see the group again until another task joins it).
-- KEYS[1] aggregation_sets, KEYS[2] groups set; ARGV[1] now (unix s), ARGV[2] group key prefix
-- Returns the number of sets reclaimed.
local stale = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1])
for _, set in ipairs(stale) do
    local group_key = string.sub(set, 1, string.find(set, ":[^:]*$") - 1)
    local members = redis.call("ZRANGE", set, 0, -1, "WITHSCORES")
    for i = 1, #members, 2 do
        redis.call("ZADD", group_key, members[i + 1], members[i])
    end
    redis.call("DEL", set)
    if #members > 0 and string.sub(group_key, 1, #ARGV[2]) == ARGV[2] then
        redis.call("SADD", KEYS[2], string.sub(group_key, #ARGV[2] + 1))
    end
end
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", ARGV[1])
return #stale
