-- watch: marks an in-flight record as waited for, so that its completion or release is
-- announced (complete.lua, release.lua). Records nobody waits for announce nothing.
--
-- KEYS[1]  the record's key
-- ARGV[1]  now from a test clock, or '' to read Redis's clock
--
-- Replies 1 (in flight, now watched) or 0 (not in flight: completed, absent or expired).
local key = KEYS[1]
local now = clock(ARGV[1])

local held = redis.call('HMGET', key, 'state', 'expires_at')
if held[1] ~= 'in_flight' or not held[2] or not less(now, held[2]) then
  return 0
end

redis.call('HSET', key, 'watched', '1')
return 1
