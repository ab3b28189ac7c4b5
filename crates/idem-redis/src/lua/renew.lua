-- renew: mirrors idem_core::store::transition::renew. A lease that lapsed but was not taken
-- over still belongs to its owner and can be renewed. The lease moves to a whole lease from
-- now, and the expiry (logical and physical) forward by as much as the lease moved forward,
-- never back: the record is still kept a TTL past its lease.
--
-- KEYS[1]  the record's key
-- ARGV[1]  token
-- ARGV[2]  lease in milliseconds, from now
-- ARGV[3]  now from a test clock, or '' to read Redis's clock
--
-- Replies 1 (applied) or 0 (stale lease: not in flight with this token, or expired).
local key = KEYS[1]
local token, lease = ARGV[1], ARGV[2]
local now = clock(ARGV[3])

local held = redis.call('HMGET', key, 'state', 'token', 'expires_at', 'lease_until')
if held[1] ~= 'in_flight' or held[2] ~= token or not held[3] or not less(now, held[3]) then
  return 0
end

local lease_until = plus(now, lease)
local moved = '0'
if held[4] then
  moved = minus(lease_until, held[4])
end
local expires_at = plus(held[3], moved)
redis.call('HSET', key, 'lease_until', lease_until, 'expires_at', expires_at)
expire(key, now, expires_at)
return 1
