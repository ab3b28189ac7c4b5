-- Shared by every script (prepended to each one in scripts.rs).
--
-- Times and tokens travel as decimal strings without leading zeros: they are u64s, and Lua
-- numbers are doubles, exact only up to 2^53. Tokens are compared with string equality;
-- times with `less`, which compares length, then bytes (string `<` would follow the
-- server's locale).
local function less(a, b)
  if #a ~= #b then
    return #a < #b
  end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return false
end

-- Physical expiry. ARGV carries (expires_at - now) + a grace period, computed by the caller,
-- or "" for a record that never expires. Logical expiry (`expires_at` against the caller's
-- `now`) is what decides; Redis deleting the key later only reclaims the space.
local function expire(key, ttl)
  if ttl == '' then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIRE', key, ttl)
  end
end
