-- Read a TaskMessage (asynq's protobuf) in Lua: its type and its rundown-key header, for the
-- flow dequeue's lanes (prepended to dequeue_flow.lua by scripts.source). Fields: type = 1
-- (string), headers = 15 (map entries: key = 1, value = 2); everything else is skipped.
local function varint(s, i)
    local value, scale = 0, 1
    while true do
        local b = string.byte(s, i)
        if not b then
            return nil, i
        end
        i = i + 1
        value = value + (b % 128) * scale
        if b < 128 then
            return value, i
        end
        scale = scale * 128
    end
end

-- the task type (field 1) and the rundown-key header (field 15, map entries) of a
-- TaskMessage; a message that does not parse gives "" for both
local function type_and_key(msg)
    local i, n = 1, #msg
    local typ, key = "", ""
    while i <= n do
        local tag
        tag, i = varint(msg, i)
        if not tag then break end
        local field, wire = math.floor(tag / 8), tag % 8
        if wire == 0 then
            local _
            _, i = varint(msg, i)
            if not _ then break end
        elseif wire == 1 then
            i = i + 8
        elseif wire == 5 then
            i = i + 4
        elseif wire == 2 then
            local len
            len, i = varint(msg, i)
            if not len then break end
            if field == 1 then
                typ = string.sub(msg, i, i + len - 1)
            elseif field == 15 then
                local e, stop = i, i + len
                local k, v = "", ""
                while e < stop do
                    local t2, l2
                    t2, e = varint(msg, e)
                    if not t2 or t2 % 8 ~= 2 then break end
                    l2, e = varint(msg, e)
                    if not l2 then break end
                    local s = string.sub(msg, e, e + l2 - 1)
                    e = e + l2
                    if math.floor(t2 / 8) == 1 then k = s else v = s end
                end
                if k == "rundown-key" then key = v end
            end
            i = i + len
        else
            break
        end
    end
    return typ, key
end
