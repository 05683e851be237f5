-- Archive every task of a container (pending LIST; scheduled, retry or group ZSET) with
-- score now, then trim the archive by age and size without deleting the trimmed hashes
-- (asynq Inspector: ArchiveAll*Tasks / ArchiveAllAggregatingTasks).
-- KEYS[1] the source, KEYS[2] archived, KEYS[3] groups
-- ARGV[1] now (unix s), ARGV[2] cutoff (now - 90 days), ARGV[3] max archive size,
-- ARGV[4] task key prefix, ARGV[5] "list" or "zset", ARGV[6] group name or ""
-- Returns the number of tasks archived.
local ids
if ARGV[5] == "list" then
    ids = redis.call("LRANGE", KEYS[1], 0, -1)
else
    ids = redis.call("ZRANGE", KEYS[1], 0, -1)
end
for _, id in ipairs(ids) do
    redis.call("ZADD", KEYS[2], ARGV[1], id)
    redis.call("HSET", ARGV[4] .. id, "state", "archived")
end
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", ARGV[2])
redis.call("ZREMRANGEBYRANK", KEYS[2], 0, -tonumber(ARGV[3]))
redis.call("DEL", KEYS[1])
if ARGV[6] ~= "" then
    redis.call("SREM", KEYS[3], ARGV[6])
end
return #ids
