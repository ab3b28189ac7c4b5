-- complete: mirrors idem_core::store::transition::complete. A lease that lapsed but was not
-- taken over still belongs to its owner: its completion is accepted.
--
-- KEYS[1]  the record's key
-- ARGV[1]  token
-- ARGV[2]  TTL of the completed record in milliseconds, from now
-- ARGV[3]  status
-- ARGV[4]  headers, encoded by the caller
-- ARGV[5]  has_body, '1' or '0' (a response stored without its body)
-- ARGV[6]  body ('' when has_body is '0')
-- ARGV[7]  now from a test clock, or '' to read Redis's clock
-- ARGV[8]  the channel finishes are announced on
--
-- Replies 1 (applied) or 0 (stale lease: not in flight with this token, or expired). A record
-- a waiter watches (watch.lua) is announced on ARGV[8], its key as the message.
local key = KEYS[1]
local token = ARGV[1]
local now = clock(ARGV[7])

local held = redis.call('HMGET', key, 'state', 'token', 'expires_at', 'watched')
if held[1] ~= 'in_flight' or held[2] ~= token or not held[3] or not less(now, held[3]) then
  return 0
end

local expires_at = plus(now, ARGV[2])
redis.call('HSET', key, 'state', 'completed', 'expires_at', expires_at, 'status', ARGV[3],
  'headers', ARGV[4], 'has_body', ARGV[5], 'body', ARGV[6])
-- A completed record has no owner left to fence.
redis.call('HDEL', key, 'token', 'lease_until', 'watched')
expire(key, now, expires_at)
if held[4] then
  redis.call('PUBLISH', ARGV[8], key)
end
return 1
