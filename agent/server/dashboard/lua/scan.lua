-- Examine up to ARGV[3] entries of one task container from position ARGV[2] and return
-- those that pass the cheap filters, at most ARGV[10] of them. The filters on type and
-- error text are substring tests on the raw message (a superset: the caller decodes
-- each match and checks the exact field), so no task is missed and few are decoded.
-- KEYS[1] the container (pending / active list, or a task zset)
-- ARGV[1] order: "list" (LRANGE from the head: newest first), "asc" or "desc" (zset by
--         score; with a time range, only the scores in it)
-- ARGV[2] position (0-based, in that order), ARGV[3] how many entries to examine
-- ARGV[4] task key prefix, ARGV[5] ID prefix ("" for any), ARGV[6] type text ("" for any),
-- ARGV[7] error text, lower case ("" for any), ARGV[8] / ARGV[9] time range in Unix
--         seconds ("" for open): the zset score, or pending_since for a list
-- ARGV[10] most matches to return
-- Returns {next position (-1: the container is exhausted), entries examined, id, msg, time,
-- ...}; a missing msg is false, a missing time is false.
local order, pos, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local prefix, idp, tneedle, eneedle = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local tmin, tmax, limit = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local ranged = tmin ~= nil or tmax ~= nil
local entries
local zset = order ~= "list"
if not zset then
    entries = redis.call("LRANGE", KEYS[1], pos, pos + count - 1)
elseif ranged then
    local lo = tmin and tostring(tmin) or "-inf"
    local hi = tmax and tostring(tmax) or "+inf"
    if order == "asc" then
        entries = redis.call("ZRANGEBYSCORE", KEYS[1], lo, hi, "WITHSCORES", "LIMIT", pos, count)
    else
        entries = redis.call("ZREVRANGEBYSCORE", KEYS[1], hi, lo, "WITHSCORES", "LIMIT", pos, count)
    end
elseif order == "asc" then
    entries = redis.call("ZRANGE", KEYS[1], pos, pos + count - 1, "WITHSCORES")
else
    entries = redis.call("ZREVRANGE", KEYS[1], pos, pos + count - 1, "WITHSCORES")
end
local step = zset and 2 or 1
local examined = #entries / step
local out = {0, 0}
local found = 0
local idlen = #idp
for i = 1, #entries, step do
    local id = entries[i]
    local ok = idlen == 0 or string.sub(id, 1, idlen) == idp
    local msg, since
    if ok then
        msg, since = unpack(redis.call("HMGET", prefix .. id, "msg", "pending_since"))
        if msg then
            if #tneedle > 0 and not string.find(msg, tneedle, 1, true) then
                ok = false
            elseif #eneedle > 0 and not string.find(string.lower(msg), eneedle, 1, true) then
                ok = false
            end
        elseif #tneedle > 0 or #eneedle > 0 then
            ok = false
        end
    end
    local t = false
    if zset then
        t = entries[i + 1]
    elseif since then
        t = tostring(math.floor(tonumber(since) / 1e9))
    end
    if ok and ranged and not zset then
        local secs = t and tonumber(t)
        ok = secs ~= nil and (tmin == nil or secs >= tmin) and (tmax == nil or secs <= tmax)
    end
    if ok then
        out[#out + 1] = id
        out[#out + 1] = msg or false
        out[#out + 1] = t
        found = found + 1
        if found >= limit then
            out[1] = pos + (i + step - 1) / step
            out[2] = (i + step - 1) / step
            return out
        end
    end
end
out[2] = examined
if examined < count then
    out[1] = -1
else
    out[1] = pos + examined
end
return out
