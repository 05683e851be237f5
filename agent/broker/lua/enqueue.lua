-- Enqueue a task for immediate processing.
-- KEYS[1] task hash, KEYS[2] pending list
-- ARGV[1] msg, ARGV[2] task id, ARGV[3] now (unix ns)
-- Returns 1 when written, 0 when a task with this ID already exists.
if redis.call("EXISTS", KEYS[1]) == 1 then
    return 0
end
redis.call("HSET", KEYS[1], "msg", ARGV[1], "state", "pending", "pending_since", ARGV[3])
redis.call("LPUSH", KEYS[2], ARGV[2])
return 1
