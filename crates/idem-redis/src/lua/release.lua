-- release: mirrors idem_core::store::transition::release.
--
-- KEYS[1]  the record's key
-- ARGV[1]  token
-- ARGV[2]  now from a test clock, or '' to read Redis's clock
-- ARGV[3]  the channel finishes are announced on
--
-- Replies 1 (applied: the key is free) or 0 (stale lease). A watched record is announced as
-- by complete.lua.
local key = KEYS[1]
local token = ARGV[1]
local now = clock(ARGV[2])

local held = redis.call('HMGET', key, 'state', 'token', 'expires_at', 'watched')
if held[1] ~= 'in_flight' or held[2] ~= token or not held[3] or not less(now, held[3]) then
  return 0
end

redis.call('DEL', key)
if held[4] then
  redis.call('PUBLISH', ARGV[3], key)
end
return 1
