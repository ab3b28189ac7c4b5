-- begin: mirrors idem_core::store::transition::begin. A script runs alone on its server, so
-- reading the clock, reading the record and writing it are one atomic step.
--
-- KEYS[1]  the record's key, a hash (see codec.rs for its fields)
-- ARGV[1]  fingerprint, 32 raw bytes
-- ARGV[2]  token
-- ARGV[3]  lease in milliseconds
-- ARGV[4]  TTL in milliseconds
-- ARGV[5]  '1' to take over a lapsed lease, '0' to report the outcome unknown
-- ARGV[6]  now from a test clock, or '' to read Redis's clock
--
-- Replies one of {'acquired'}, {'replay', status, headers, has_body, body},
-- {'in_flight', lease_until, now}, {'unknown'}, {'mismatch'}, {'corrupt', what}.
local key = KEYS[1]
local fingerprint, token, lease, ttl, take_over = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = clock(ARGV[6])

local held = redis.call('HMGET', key, 'state', 'fp', 'lease_until', 'expires_at',
  'status', 'headers', 'has_body', 'body')
local state, held_fingerprint, held_lease_until, held_expires_at = held[1], held[2], held[3], held[4]

if state then
  if not held_expires_at then
    return {'corrupt', 'no expires_at'}
  end
  -- A record past its expiry is absent, whether or not Redis has deleted it yet.
  if less(now, held_expires_at) then
    if held_fingerprint ~= fingerprint then
      return {'mismatch'}
    end
    if state == 'completed' then
      return {'replay', held[5], held[6], held[7], held[8]}
    end
    if state ~= 'in_flight' or not held_lease_until then
      return {'corrupt', 'unknown state'}
    end
    if less(now, held_lease_until) then
      return {'in_flight', held_lease_until, now}
    end
    -- In flight, same request, lease lapsed: the owner died or lost the store mid-execution.
    if take_over ~= '1' then
      return {'unknown'}
    end
    -- Taken over below with the new token, which fences the lapsed owner off.
  end
end

local lease_until = plus(now, lease)
local expires_at = max(plus(now, ttl), lease_until)
-- Replace the whole hash: an expired completed record's response fields must not linger.
redis.call('DEL', key)
redis.call('HSET', key, 'state', 'in_flight', 'fp', fingerprint, 'token', token,
  'lease_until', lease_until, 'expires_at', expires_at)
expire(key, now, expires_at)
return {'acquired'}
