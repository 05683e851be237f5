-- List the tasks whose lease has expired far enough to be recovered, in many queues at once
-- (one call per hash slot: every key of one queue shares its {queue} tag; on a standalone
-- Redis any queues may share a call). Judged by Redis's clock, the same clock the lease
-- fence uses:
--   * a fenced lease (its holder writes only through lease_fence.lua, which refuses it from
--     score + grace + 1 on) is expired once TIME >= score + ARGV[1]. A lease is fenced when
--     the task hash's fenced_lease ("<score>" or "<score> <holder>") has its score, or names a
--     holder whose renewal record for the queue ("rundown:{q}:renewed:<holder>", written by
--     renew_leases.lua) has it;
--   * any other lease (a Go asynq server's) keeps asynq's rule: TIME >= score + ARGV[2].
-- KEYS[i] lease zset of queue i
-- ARGV[1] fenced skew (s), ARGV[2] asynq skew (s), ARGV[3] max tasks per queue
-- (a task's key is its queue's lease key with "lease" replaced by "t:<id>", as asynq names them)
-- Returns a flat list {queue index, id, lease score, fenced (1/0), msg, ...}; msg is false for
-- an ID whose hash is gone. The score lets the recovery write check, atomically, that the
-- lease has not been renewed since (recover_claim.lua).
local now = tonumber(redis.call("TIME")[1])
local fenced_cutoff = tostring(now - tonumber(ARGV[1]))
local asynq_cutoff = now - tonumber(ARGV[2])
local limit = ARGV[3]
local out = {}
for i = 1, #KEYS do
    local lease = KEYS[i]
    -- ZCOUNT first: the cheapest look at a queue with nothing expired (most queues, most of
    -- the time): about 0.3 us, against 1.1-1.5 us for a ZRANGEBYSCORE.
    if redis.call("ZCOUNT", lease, "-inf", fenced_cutoff) > 0 then
        local expired = redis.call("ZRANGEBYSCORE", lease, "-inf", fenced_cutoff, "WITHSCORES",
                                   "LIMIT", 0, limit)
        for j = 1, #expired, 2 do
            local id, score = expired[j], expired[j + 1]
            local key = string.sub(lease, 1, -6) .. "t:" .. id
            local msg, mark = unpack(redis.call("HMGET", key, "msg", "fenced_lease"))
            local fenced = false
            if mark then
                local at, holder = string.match(mark, "^(%S+) (%S+)$")
                fenced = tonumber(at or mark) == tonumber(score)
                if not fenced and holder then
                    local record = redis.call("GET", "rundown:" .. string.sub(lease, 7, -6)
                                              .. "renewed:" .. holder)
                    fenced = record and tonumber(record) == tonumber(score) or false
                end
            end
            if fenced or tonumber(score) <= asynq_cutoff then
                out[#out + 1] = i
                out[#out + 1] = id
                out[#out + 1] = score
                out[#out + 1] = fenced and 1 or 0
                out[#out + 1] = msg
            end
        end
    end
end
return out
