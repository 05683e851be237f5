-- Add a task to an aggregation group.
-- KEYS[1] task hash, KEYS[2] group zset, KEYS[3] groups set, KEYS[4] unique lock (optional)
-- ARGV[1] msg, ARGV[2] task id, ARGV[3] now (unix s), ARGV[4] group, ARGV[5] lock ttl (s)
if KEYS[4] then
    if not redis.call("SET", KEYS[4], ARGV[2], "NX", "EX", ARGV[5]) then
        return -1
    end
end
if redis.call("EXISTS", KEYS[1]) == 1 then
    return 0
end
redis.call("HSET", KEYS[1], "msg", ARGV[1], "state", "aggregating", "group", ARGV[4])
redis.call("ZADD", KEYS[2], ARGV[3], ARGV[2])
redis.call("SADD", KEYS[3], ARGV[4])
return 1
