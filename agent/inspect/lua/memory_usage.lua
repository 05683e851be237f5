-- Estimate the bytes a queue uses: for each container, the mean MEMORY USAGE of up to
-- ARGV[2] sampled task hashes times the container size, plus the container itself;
-- aggregating tasks are sampled from the first ARGV[3] groups.
-- KEYS[1] pending, KEYS[2] active (lists), KEYS[3] scheduled, KEYS[4] retry,
-- KEYS[5] archived, KEYS[6] completed (zsets), KEYS[7] groups
-- ARGV[1] task key prefix, ARGV[2] sample size, ARGV[3] groups sampled, ARGV[4] group prefix
local sample = tonumber(ARGV[2])
local function sampled_bytes(ids)
    local total, n = 0, 0
    for _, id in ipairs(ids) do
        local bytes = redis.call("MEMORY", "USAGE", ARGV[1] .. id)
        if bytes then
            total = total + bytes
            n = n + 1
        end
    end
    return total, n
end
local estimate = 0
for i = 1, 6 do
    local ids, size
    if i <= 2 then
        ids = redis.call("LRANGE", KEYS[i], 0, sample - 1)
        size = redis.call("LLEN", KEYS[i])
    else
        ids = redis.call("ZRANGE", KEYS[i], 0, sample - 1)
        size = redis.call("ZCARD", KEYS[i])
    end
    local total, n = sampled_bytes(ids)
    if n > 0 then
        estimate = estimate + total / n * size
    end
    local own = redis.call("MEMORY", "USAGE", KEYS[i])
    if own then
        estimate = estimate + own
    end
end
local names = redis.call("SMEMBERS", KEYS[7])
local grouped, total, n = 0, 0, 0
for i, name in ipairs(names) do
    local key = ARGV[4] .. name
    grouped = grouped + redis.call("ZCARD", key)
    if i <= tonumber(ARGV[3]) then
        local t, c = sampled_bytes(redis.call("ZRANGE", key, 0, sample - 1))
        total, n = total + t, n + c
    end
end
if n > 0 then
    estimate = estimate + total / n * grouped
end
return math.floor(estimate)
