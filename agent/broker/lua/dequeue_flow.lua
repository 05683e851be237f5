-- dequeue.lua under flow limits (a queue with rate, max_running, key_max_running or types):
-- the limits are checked and the tasks moved in the same call, so agents sharing the queue
-- together never exceed them. Every key carries the queue's {hash tag}: one Cluster slot.
-- KEYS[1] pending, KEYS[2] paused, KEYS[3] active, KEYS[4] lease, KEYS[5] queue rate state
-- ARGV[1] lease expiry (unix s), ARGV[2] task key prefix, ARGV[3] max tasks,
-- ARGV[4] queue rate: microseconds per token (0 = none), ARGV[5] its burst (tokens),
-- ARGV[6] max_running (0 = none), ARGV[7] key_max_running (0 = none),
-- ARGV[8] flow key prefix ("rundown:{q}:"), ARGV[9] 1 = serve by lanes (keys or types),
-- ARGV[10..] type rates: type, microseconds per token, burst, ...
-- Returns {wait_ms, reason, tokens, running, id1, msg1, ...}: wait_ms > 0 is when the limit
-- named by reason lets the next task go (a token is due), -1 a limit freed by a task's end
-- (ask again soon), 0 none holds; tokens are the queue's tokens left (-1: no rate); running
-- the queue's leases. An ID with no msg is an orphan, dropped as by dequeue.lua.
-- Rates are GCRA (a theoretical arrival time per rate, in microseconds of Redis's clock):
-- a window of t seconds starts at most burst + rate * t tasks.
-- (flow_message.lua, prepended by scripts.source, reads the type and rundown-key of a message.)
if redis.call("EXISTS", KEYS[2]) == 1 then
    return {0, "paused", -1, -1}
end
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local want = tonumber(ARGV[3])
local expiry, tprefix, prefix = ARGV[1], ARGV[2], ARGV[8]
local wait, reason = 0, ""

local function note(ms, why)
    -- the earliest due limit wins; -1 (a slot freed by a task's end) only when nothing is due
    if ms > 0 and (wait <= 0 or ms < wait) then
        wait, reason = ms, why
    elseif ms < 0 and wait == 0 then
        wait, reason = -1, why
    end
end

-- GCRA: how many tokens a rate has now, and its theoretical arrival time
local function tokens_of(key, interval, burst)
    local tat = tonumber(redis.call("GET", key) or "0")
    if tat < now then
        tat = now
    end
    local tolerance = (burst - 1) * interval
    local n = math.floor((now + tolerance - tat) / interval) + 1
    if n < 0 then n = 0 end
    if n > burst then n = burst end
    return n, tat
end

local function spend(key, interval, burst, tat, used)
    tat = tat + used * interval
    redis.call("SET", key, string.format("%.0f", tat), "PX", math.ceil((tat - now) / 1000) + 1000)
    return tat
end

local function due_ms(tat, interval, burst)
    local ms = math.ceil((tat - (burst - 1) * interval - now) / 1000)
    if ms < 1 then ms = 1 end
    return ms
end

local running = redis.call("ZCARD", KEYS[4])
local max_running = tonumber(ARGV[6])
if max_running > 0 then
    local free = max_running - running
    if free <= 0 then
        return {-1, "running", -1, running}
    end
    if free < want then
        want = free
        note(-1, "running")
    end
end

local interval, burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, tat = -1, 0
if interval > 0 then
    tokens, tat = tokens_of(KEYS[5], interval, burst)
    if tokens <= 0 then
        return {due_ms(tat, interval, burst), "rate", 0, running}
    end
    if tokens <= want then
        want = tokens
    end
end

local function take(id, out)
    local key = tprefix .. id
    local msg = redis.call("HGET", key, "msg")
    if msg then
        redis.call("HSET", key, "state", "active", "fenced_lease", expiry)
        redis.call("HDEL", key, "pending_since")
        redis.call("ZADD", KEYS[4], expiry, id)
    else
        redis.call("LREM", KEYS[3], 1, id)
    end
    out[#out + 1] = id
    out[#out + 1] = msg
    return msg
end

local out = {}
local taken = 0
if ARGV[9] ~= "1" then
    for _ = 1, want do
        local id = redis.call("RPOPLPUSH", KEYS[1], KEYS[3])
        if not id then
            break
        end
        if take(id, out) then
            taken = taken + 1
        end
    end
else
    -- Lanes: the pending tasks of one concurrency key (the rundown-key header; "" for none),
    -- split by type where the type has a rate. The tasks stay in pending, where asynq's
    -- tooling sees them; a lane lists their IDs in order, and the ring lists the lanes with
    -- work, served round-robin, one task per lane per turn.
    local ring, indexed = prefix .. "ring", prefix .. "indexed"
    local kmax = tonumber(ARGV[7])
    local types = {}
    for i = 10, #ARGV, 3 do
        types[ARGV[i]] = {tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])}
    end

    local function index(id)
        local msg = redis.call("HGET", tprefix .. id, "msg")
        local typ, key = "", ""
        if msg then
            typ, key = type_and_key(msg)
        end
        local lane = key .. "\0" .. (types[typ] and typ or "")
        if redis.call("RPUSH", prefix .. "lane:" .. lane, id) == 1 then
            redis.call("LPUSH", ring, lane)
        end
        redis.call("SADD", indexed, id)
    end

    -- New IDs are at the ends of pending: producers and the forwarder push on the left,
    -- requeue and recovery on the right; the indexed ones lie between. Each call indexes at
    -- most 5,000, the innermost (oldest) first, so what is left stays at the ends.
    local budget = 5000
    local function is_indexed(id)
        return redis.call("SISMEMBER", indexed, id) == 1
    end
    -- the right end: a few requeued or recovered IDs (looked for within 1,000 of the end)
    local tail = redis.call("LINDEX", KEYS[1], -1)
    if tail and not is_indexed(tail) and redis.call("SCARD", indexed) > 0 then
        local found, bounded = {}, false
        local chunk = redis.call("LRANGE", KEYS[1], -1000, -1)
        for j = #chunk, 1, -1 do
            if is_indexed(chunk[j]) then
                bounded = true
                break
            end
            found[#found + 1] = chunk[j]
        end
        if bounded then
            for j = #found, 1, -1 do index(found[j]) end
            budget = budget - #found
        end
    end
    -- the left end: the unindexed prefix ends where the indexed IDs begin, about
    -- LLEN - SCARD(indexed) from the left (SCARD can only overcount: IDs another consumer
    -- took), so its innermost element is found without scanning the prefix
    local head = redis.call("LINDEX", KEYS[1], 0)
    if head and budget > 0 and not is_indexed(head) then
        local len = redis.call("LLEN", KEYS[1])
        local pos = len - redis.call("SCARD", indexed) - 1
        if pos < 0 then pos = 0 end
        local inner = pos
        local at = redis.call("LINDEX", KEYS[1], pos)
        if at and is_indexed(at) then
            -- past the boundary (unindexed IDs on the right end): walk left to the prefix
            while pos > 0 do
                local lo = math.max(0, pos - 500)
                local chunk = redis.call("LRANGE", KEYS[1], lo, pos - 1)
                local hit = nil
                for j = #chunk, 1, -1 do
                    if not is_indexed(chunk[j]) then hit = lo + j - 1 break end
                end
                if hit then inner = hit break end
                pos = lo
                inner = -1
            end
        else
            -- in the prefix: walk right to its last element
            while true do
                local chunk = redis.call("LRANGE", KEYS[1], inner + 1, inner + 500)
                local stop = false
                for j = 1, #chunk do
                    if is_indexed(chunk[j]) then stop = true break end
                    inner = inner + 1
                end
                if stop or #chunk < 500 then break end
            end
        end
        if inner >= 0 then
            local lo = math.max(0, inner - budget + 1)
            local ids = redis.call("LRANGE", KEYS[1], lo, inner)
            for j = #ids, 1, -1 do index(ids[j]) end
            budget = budget - #ids
        end
    end

    -- running tasks of a key: a sorted set of IDs, each counted while it holds a lease
    local function key_running(key)
        local set = prefix .. "krun:" .. key
        local n = 0
        for _, id in ipairs(redis.call("ZRANGE", set, 0, -1)) do
            if redis.call("ZSCORE", KEYS[4], id) then
                n = n + 1
            else
                redis.call("ZREM", set, id)
            end
        end
        return n
    end

    local type_state = {}
    local lanes = redis.call("LLEN", ring)
    local visits, idle = 0, 0
    while taken < want and idle < lanes and visits < 2 * want + 500 do
        local lane = redis.call("RPOP", ring)
        if not lane then break end
        visits = visits + 1
        local cut, at = nil, 0  -- the last NUL: a type has none, a key might
        repeat
            at = string.find(lane, "\0", at + 1, true)
            if at then cut = at end
        until not at
        cut = cut or #lane + 1
        local key, typ = string.sub(lane, 1, cut - 1), string.sub(lane, cut + 1)
        local open = true
        if kmax > 0 and key ~= "" and key_running(key) >= kmax then
            open = false
            note(-1, "key")
        end
        local ts = nil
        if open and typ ~= "" and types[typ] then  -- (a lane of a type no longer rated: no limit)
            ts = type_state[typ]
            if not ts then
                local spec = types[typ]
                local key_t = prefix .. "rate:type:" .. typ
                local n, ttat = tokens_of(key_t, spec[1], spec[2])
                ts = {key_t, spec[1], spec[2], ttat, n, 0}
                type_state[typ] = ts
            end
            if ts[5] - ts[6] <= 0 then
                open = false
                note(due_ms(ts[4] + ts[6] * ts[2], ts[2], ts[3]), "type")
            end
        end
        local list = prefix .. "lane:" .. lane
        local got = false
        while open do
            local id = redis.call("LPOP", list)
            if not id then break end
            redis.call("SREM", indexed, id)
            if redis.call("LREM", KEYS[1], -1, id) > 0 then  -- still pending: ours now
                redis.call("LPUSH", KEYS[3], id)
                if take(id, out) then
                    taken = taken + 1
                    got = true
                    if key ~= "" and kmax > 0 then
                        redis.call("ZADD", prefix .. "krun:" .. key, expiry, id)
                    end
                    if ts then ts[6] = ts[6] + 1 end
                end
                break
            end
            -- gone from pending (taken by another consumer, deleted): forget it
        end
        if got then idle = 0 else idle = idle + 1 end
        if redis.call("EXISTS", list) == 1 then
            redis.call("LPUSH", ring, lane)
        end
    end
    for _, ts in pairs(type_state) do
        if ts[6] > 0 then spend(ts[1], ts[2], ts[3], ts[4], ts[6]) end
    end
end

if interval > 0 then
    if taken > 0 then
        tat = spend(KEYS[5], interval, burst, tat, taken)
    end
    tokens = tokens - taken
    if tokens <= 0 then
        note(due_ms(tat, interval, burst), "rate")
    end
end
if max_running > 0 and running + taken >= max_running then
    note(-1, "running")
end
local reply = {wait, reason, tokens, running + taken}
for i = 1, #out do
    reply[#reply + 1] = out[i]
end
return reply
