-- Schedule under a uniqueness lock.
-- KEYS[1] unique lock, KEYS[2] task hash, KEYS[3] scheduled zset
-- ARGV[1] task id, ARGV[2] lock ttl (s), ARGV[3] process at (unix s), ARGV[4] msg
if not redis.call("SET", KEYS[1], ARGV[1], "NX", "EX", ARGV[2]) then
    return -1
end
if redis.call("EXISTS", KEYS[2]) == 1 then
    return 0
end
redis.call("HSET", KEYS[2], "msg", ARGV[4], "state", "scheduled", "unique_key", KEYS[1])
redis.call("ZADD", KEYS[3], ARGV[3], ARGV[1])
return 1
