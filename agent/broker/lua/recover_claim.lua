-- Recovery claim, run in front of the retry, retry_now or archive script that recovers a task whose
-- lease expired: ARGV[1] is the lease score list_lease_expired.lua saw. It is taken out of
-- ARGV, so the script below sees its own arguments unchanged. The write goes through only if
-- the lease is still exactly that one: a renewal that landed in between (renew_leases.lua
-- renews only while its holder may still write) makes it refuse with LEASE RENEWED, so a
-- task is never taken from a holder that could still write its outcome.
-- The scripts it guards all have KEYS[3] = lease zset and ARGV[1] = task id.
local seen = table.remove(ARGV, 1)
local score = redis.call("ZSCORE", KEYS[3], ARGV[1])
if not score then
    return redis.error_reply("NOT FOUND")
end
if tonumber(score) ~= tonumber(seen) then
    return redis.error_reply("LEASE RENEWED")
end
