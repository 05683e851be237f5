-- Renew our leases in one queue (the LeaseKeeper, every couple of seconds). A lease is
-- renewed only if it is still ours and its holder may still write: its score is one this
-- holder wrote (ARGV candidates: the last confirmed one, and any whose reply was lost) and
-- Redis's clock is not past it plus the fence grace. A lease recovered, or recovered and
-- taken by another holder, is left alone (ZADD XX alone would overwrite the new holder's).
-- The score never goes down.
-- The fence marker (the task hash's fenced_lease) is not rewritten at every renewal: every
-- lease a renewal writes gets the same score, so the holder's renewal record (KEYS[2], one
-- key per holder and queue, written once per call) says "my fenced leases in this queue have
-- this score", and a task's marker names its holder ("<score> <holder>"), written once, at
-- the task's first renewal (ARGV flag 0). list_lease_expired.lua reads a lease as fenced if
-- its score equals the marker's score or its holder's record. A lease whose score cannot be
-- the record's (never lowered below a later score) gets its own marker again.
-- Scores are read with one ZMSCORE and written with one ZADD per chunk of tasks; the hashes to
-- mark are checked with one EXISTS: a holder of 64 tasks already marked runs 3 commands per
-- renewal (ZMSCORE, ZADD, SET), not 3 + 64.
-- KEYS[1] lease zset, KEYS[2] this holder's renewal record for the queue
-- ARGV[1] new expiry (unix s), ARGV[2] grace (s), ARGV[3] task key prefix, ARGV[4] holder,
-- ARGV[5] the record's lifetime (s), then per task: id, marked (1: its marker names this
-- holder already), n, n candidate scores
-- Returns, per task, the lease score now held (integer) or false if the lease is lost.
local now = tonumber(redis.call("TIME")[1])
local grace = tonumber(ARGV[2])
local new_expiry = tonumber(ARGV[1])
local holder = ARGV[4]
local CHUNK = 1000 -- well under Lua's limit on unpack()ed arguments
local out = {}
local starts, ids = {}, {}
local i = 6
while i <= #ARGV do
    starts[#starts + 1] = i
    ids[#ids + 1] = ARGV[i]
    i = i + 3 + tonumber(ARGV[i + 2])
end
local any = false
for first = 1, #ids, CHUNK do
    local last = math.min(first + CHUNK - 1, #ids)
    local scores = redis.call("ZMSCORE", KEYS[1], unpack(ids, first, last))
    local pairs_ = {}
    local to_mark = {}
    for k = first, last do
        local result = false
        local score = scores[k - first + 1]
        if score then
            local current = tonumber(score)
            local at = starts[k]
            for j = at + 3, at + 2 + tonumber(ARGV[at + 2]) do
                if tonumber(ARGV[j]) == current then
                    if now <= current + grace then
                        local expiry = new_expiry
                        if current > expiry then
                            expiry = current
                        end
                        pairs_[#pairs_ + 1] = expiry
                        pairs_[#pairs_ + 1] = ids[k]
                        if ARGV[at + 1] ~= "1" or expiry ~= new_expiry then
                            to_mark[#to_mark + 1] = k
                        end
                        result = expiry
                    end
                    break
                end
            end
        end
        out[k] = result
    end
    if #pairs_ > 0 then
        any = true
        redis.call("ZADD", KEYS[1], "XX", unpack(pairs_))
    end
    if #to_mark > 0 then
        local hashes = {}
        for n, k in ipairs(to_mark) do
            hashes[n] = ARGV[3] .. ids[k]
        end
        -- every hash there (the rule): one EXISTS for all; else look at each (no stub hashes)
        local all = redis.call("EXISTS", unpack(hashes)) == #hashes
        for n, k in ipairs(to_mark) do
            if all or redis.call("EXISTS", hashes[n]) == 1 then
                redis.call("HSET", hashes[n], "fenced_lease", out[k] .. " " .. holder)
            end
        end
    end
end
if any then
    redis.call("SET", KEYS[2], new_expiry, "EX", ARGV[5])
end
return out
