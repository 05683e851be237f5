-- Renew our leases in one queue (the LeaseKeeper, every couple of seconds). A lease is
-- renewed only if it is still ours and its holder may still write: its score is one this
-- holder wrote (ARGV candidates: the last confirmed one, and any whose reply was lost) and
-- Redis's clock is not past it plus the fence grace. A lease recovered, or recovered and
-- taken by another holder, is left alone (ZADD XX alone would overwrite the new holder's).
-- The score never goes down, and the task hash's fenced_lease follows it.
-- The scores are read with one ZMSCORE and written with one ZADD per chunk of tasks, and the
-- hashes are checked with one EXISTS (not a ZSCORE, a ZADD and an EXISTS per task): an agent
-- holding 64 tasks runs 3 + 64 Redis commands per renewal instead of 4 x 64.
-- KEYS[1] lease zset
-- ARGV[1] new expiry (unix s), ARGV[2] grace (s), ARGV[3] task key prefix,
-- then per task: id, n, n candidate scores
-- Returns, per task, the lease score now held (integer) or false if the lease is lost.
local now = tonumber(redis.call("TIME")[1])
local grace = tonumber(ARGV[2])
local new_expiry = tonumber(ARGV[1])
local CHUNK = 1000 -- well under Lua's limit on unpack()ed arguments
local out = {}
local starts, ids = {}, {}
local i = 4
while i <= #ARGV do
    starts[#starts + 1] = i
    ids[#ids + 1] = ARGV[i]
    i = i + 2 + tonumber(ARGV[i + 1])
end
for first = 1, #ids, CHUNK do
    local last = math.min(first + CHUNK - 1, #ids)
    local scores = redis.call("ZMSCORE", KEYS[1], unpack(ids, first, last))
    local pairs_ = {}
    local renewed = {}
    for k = first, last do
        local result = false
        local score = scores[k - first + 1]
        if score then
            local current = tonumber(score)
            local at = starts[k]
            for j = at + 2, at + 1 + tonumber(ARGV[at + 1]) do
                if tonumber(ARGV[j]) == current then
                    if now <= current + grace then
                        local expiry = new_expiry
                        if current > expiry then
                            expiry = current
                        end
                        pairs_[#pairs_ + 1] = expiry
                        pairs_[#pairs_ + 1] = ids[k]
                        renewed[#renewed + 1] = k
                        result = expiry
                    end
                    break
                end
            end
        end
        out[k] = result
    end
    if #pairs_ > 0 then
        redis.call("ZADD", KEYS[1], "XX", unpack(pairs_))
        local hashes = {}
        for n, k in ipairs(renewed) do
            hashes[n] = ARGV[3] .. ids[k]
        end
        -- every hash there (the rule): one EXISTS for all; else look at each (no stub hashes)
        local all = redis.call("EXISTS", unpack(hashes)) == #hashes
        for n, k in ipairs(renewed) do
            if all or redis.call("EXISTS", hashes[n]) == 1 then
                redis.call("HSET", hashes[n], "fenced_lease", out[k])
            end
        end
    end
end
return out
