-- get: the record's fields with the clock that judges them, read in one atomic step on the
-- node that holds the key (on a cluster, any other node's clock could disagree). Whether the
-- record is live at `now` is decided by the caller (codec.rs), like in the other scripts:
-- `expires_at` against `now`.
--
-- KEYS[1]  the record's key
-- ARGV[1]  now from a test clock, or '' to read Redis's clock
--
-- Replies {now, field, value, field, value, ...}: just {now} when the key is absent.
local reply = redis.call('HGETALL', KEYS[1])
table.insert(reply, 1, clock(ARGV[1]))
return reply
