-- Live members of a heartbeat registry (asynq:servers or asynq:workers), pruning the dead.
-- KEYS[1] the registry zset (member = key name, score = expiry in unix s)
-- ARGV[1] now (unix s)
-- Returns the members whose expiry is >= now, then removes those that expired before now - 1.
local now = tonumber(ARGV[1])
local live = redis.call("ZRANGEBYSCORE", KEYS[1], now, "+inf")
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - 1)
return live
