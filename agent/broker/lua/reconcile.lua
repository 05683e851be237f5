-- Give an already-expired lease to every active ID that has none, so the recoverer treats
-- it as abandoned (the lease is not fenced, so asynq's rule applies: the score is far enough
-- in the past). Atomic, so an ID that completes meanwhile is never touched. Many queues per
-- call (one call per hash slot), like list_lease_expired.lua.
-- KEYS[2i - 1] active list, KEYS[2i] lease zset of queue i
-- ARGV[1] expired lease score (unix s)
-- Returns a flat list {queue index, id, ...} of the IDs fixed.
local fixed = {}
for i = 1, #KEYS, 2 do
    for _, id in ipairs(redis.call("LRANGE", KEYS[i], 0, -1)) do
        if not redis.call("ZSCORE", KEYS[i + 1], id) then
            redis.call("ZADD", KEYS[i + 1], ARGV[1], id)
            fixed[#fixed + 1] = (i + 1) / 2
            fixed[#fixed + 1] = id
        end
    end
end
return fixed
