-- List the tasks whose lease expired at or before the cutoff.
-- KEYS[1] lease zset
-- ARGV[1] cutoff (unix s), ARGV[2] task key prefix
-- Returns a flat list {id1, msg1, ...}; msg is false for an ID whose hash is gone.
local out = {}
for _, id in ipairs(redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1])) do
    out[#out + 1] = id
    out[#out + 1] = redis.call("HGET", ARGV[2] .. id, "msg")
end
return out
