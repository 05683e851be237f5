-- Lease fence, run in front of an outcome script (done, mark_complete, retry, archive,
-- requeue): ARGV[1] is the writer's lease deadline (unix s; "" = none). It is taken out of
-- ARGV, so the script below sees its own arguments unchanged. A write that reaches Redis after
-- that deadline (by Redis's clock) is refused: it was sent before a network stall and arrives
-- after the lease ran out, when the task may already be recovered and running elsewhere.
local fence = table.remove(ARGV, 1)
if fence ~= "" and tonumber(redis.call("TIME")[1]) > tonumber(fence) then
    return redis.error_reply("LEASE EXPIRED")
end
