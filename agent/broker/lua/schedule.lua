-- Schedule a task to run at a later time.
-- KEYS[1] task hash, KEYS[2] scheduled zset
-- ARGV[1] msg, ARGV[2] process at (unix s), ARGV[3] task id
if redis.call("EXISTS", KEYS[1]) == 1 then
    return 0
end
redis.call("HSET", KEYS[1], "msg", ARGV[1], "state", "scheduled")
redis.call("ZADD", KEYS[2], ARGV[2], ARGV[3])
return 1
