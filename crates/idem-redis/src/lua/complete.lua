-- complete: mirrors idem_core::store::transition::complete.
--
-- KEYS[1]  the record's key
-- ARGV[1]  token
-- ARGV[2]  now
-- ARGV[3]  expires_at of the completed record
-- ARGV[4]  status
-- ARGV[5]  headers, encoded by the caller
-- ARGV[6]  has_body, '1' or '0' (a response stored without its body)
-- ARGV[7]  body ('' when has_body is '0')
-- ARGV[8]  physical TTL in milliseconds, or ""
--
-- Replies 1 (applied) or 0 (stale lease: not in flight with this token, or expired).
local key = KEYS[1]
local token, now = ARGV[1], ARGV[2]

local held = redis.call('HMGET', key, 'state', 'token', 'expires_at')
if held[1] ~= 'in_flight' or held[2] ~= token or not held[3] or not less(now, held[3]) then
  return 0
end

redis.call('HSET', key, 'state', 'completed', 'expires_at', ARGV[3], 'status', ARGV[4],
  'headers', ARGV[5], 'has_body', ARGV[6], 'body', ARGV[7])
-- A completed record has no owner left to fence.
redis.call('HDEL', key, 'token', 'lease_until')
expire(key, ARGV[8])
return 1
