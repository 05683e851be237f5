-- Enqueue under a uniqueness lock.
-- KEYS[1] unique lock, KEYS[2] task hash, KEYS[3] pending list
-- ARGV[1] task id, ARGV[2] lock ttl (s), ARGV[3] msg, ARGV[4] now (unix ns)
-- Returns 1 written, 0 ID conflict (the lock just taken stays until its TTL), -1 duplicate.
if not redis.call("SET", KEYS[1], ARGV[1], "NX", "EX", ARGV[2]) then
    return -1
end
if redis.call("EXISTS", KEYS[2]) == 1 then
    return 0
end
redis.call("HSET", KEYS[2], "msg", ARGV[3], "state", "pending", "pending_since", ARGV[4],
    "unique_key", KEYS[1])
redis.call("LPUSH", KEYS[3], ARGV[1])
return 1
