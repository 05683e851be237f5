-- Give an already-expired lease to every active ID that has none, so the recoverer
-- treats it as abandoned. Atomic, so an ID that completes meanwhile is never touched.
-- KEYS[1] active, KEYS[2] lease
-- ARGV[1] expired lease score (unix s)
-- Returns the IDs fixed.
local fixed = {}
for _, id in ipairs(redis.call("LRANGE", KEYS[1], 0, -1)) do
    if not redis.call("ZSCORE", KEYS[2], id) then
        redis.call("ZADD", KEYS[2], ARGV[1], id)
        fixed[#fixed + 1] = id
    end
end
return fixed
