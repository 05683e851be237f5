-- One page of a task ZSET (scheduled, retry, archived, completed or a group), by rank.
-- KEYS[1] the zset
-- ARGV[1] start rank, ARGV[2] stop rank, ARGV[3] task key prefix
-- Returns {zset size, id, score, msg, result, ...}; a missing field is false.
local out = {redis.call("ZCARD", KEYS[1])}
local page = redis.call("ZRANGE", KEYS[1], ARGV[1], ARGV[2], "WITHSCORES")
for i = 1, #page, 2 do
    local id = page[i]
    local msg, result = unpack(redis.call("HMGET", ARGV[3] .. id, "msg", "result"))
    out[#out + 1] = id
    out[#out + 1] = page[i + 1]
    out[#out + 1] = msg
    out[#out + 1] = result
end
return out
