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
--
-- A record in flight with this request's own token was acquired by this very begin, run
-- before: a cluster connection runs a script again after an I/O error or a response timeout,
-- even when the server already ran it. It is acquired again, unchanged while its lease is
-- live; a lapsed lease is renewed as renew.lua would (a whole lease from now, the expiry
-- moved forward as much).
local key = KEYS[1]
local fingerprint, token, lease, ttl, take_over = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now = clock(ARGV[6])

local held = redis.call('HMGET', key, 'state', 'fp', 'token', 'lease_until', 'expires_at',
  'status', 'headers', 'has_body', 'body')
local state, held_fingerprint, held_token = held[1], held[2], held[3]
local held_lease_until, held_expires_at = held[4], held[5]

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
      return {'replay', held[6], held[7], held[8], held[9]}
    end
    if state ~= 'in_flight' or not held_lease_until then
      return {'corrupt', 'unknown state'}
    end
    if held_token == token then
      if not less(now, held_lease_until) then
        local lease_until = plus(now, lease)
        local expires_at = plus(held_expires_at, minus(lease_until, held_lease_until))
        redis.call('HSET', key, 'lease_until', lease_until, 'expires_at', expires_at)
        expire(key, now, expires_at)
      end
      return {'acquired'}
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

-- Kept a whole TTL after the lease lapses, so that an owner's crash leaves an unknown
-- outcome for a TTL, not a free key.
local lease_until = plus(now, lease)
local expires_at = plus(lease_until, ttl)
-- Replace the whole hash: an expired completed record's response fields must not linger.
redis.call('DEL', key)
redis.call('HSET', key, 'state', 'in_flight', 'fp', fingerprint, 'token', token,
  'lease_until', lease_until, 'expires_at', expires_at)
expire(key, now, expires_at)
return {'acquired'}
