-- Renew our leases in one queue (the LeaseKeeper, every couple of seconds). A lease is
-- renewed only if it is still ours and its holder may still write: its score is one this
-- holder wrote (ARGV candidates: the last confirmed one, and any whose reply was lost) and
-- Redis's clock is not past it plus the fence grace. A lease recovered, or recovered and
-- taken by another holder, is left alone (ZADD XX alone would overwrite the new holder's).
-- The score never goes down, and the task hash's fenced_lease follows it.
-- KEYS[1] lease zset
-- ARGV[1] new expiry (unix s), ARGV[2] grace (s), ARGV[3] task key prefix,
-- then per task: id, n, n candidate scores
-- Returns, per task, the lease score now held (integer) or false if the lease is lost.
local now = tonumber(redis.call("TIME")[1])
local grace = tonumber(ARGV[2])
local out = {}
local i = 4
while i <= #ARGV do
    local id, n = ARGV[i], tonumber(ARGV[i + 1])
    local result = false
    local score = redis.call("ZSCORE", KEYS[1], id)
    if score then
        local current = tonumber(score)
        for j = i + 2, i + 1 + n do
            if tonumber(ARGV[j]) == current then
                if now <= current + grace then
                    local expiry = ARGV[1]
                    if current > tonumber(expiry) then
                        expiry = score
                    end
                    redis.call("ZADD", KEYS[1], "XX", expiry, id)
                    local key = ARGV[3] .. id
                    if redis.call("EXISTS", key) == 1 then
                        redis.call("HSET", key, "fenced_lease", expiry)
                    end
                    result = tonumber(expiry)
                end
                break
            end
        end
    end
    out[#out + 1] = result
    i = i + 2 + n
end
return out
