-- Shared by every script (prepended to each one in store.rs, after the constants GRACE_MS and
-- MAX_PHYSICAL_TTL_MS).
--
-- Times and tokens travel as decimal strings without leading zeros: they are u64s, and Lua
-- numbers are doubles, exact only up to 2^53. Tokens are compared with string equality;
-- times with `less`, which compares length, then bytes (string `<` would follow the
-- server's locale), and added with `plus`, digit by digit, saturating like
-- idem_core::Timestamp::plus.
local U64_MAX = '18446744073709551615'

-- Below 2^53 a Lua number holds a time exactly: compare as numbers (every real time, every
-- lease). Longer strings are larger; equal lengths past that compare byte by byte.
local EXACT_DIGITS = 15

local function less(a, b)
  if #a ~= #b then
    return #a < #b
  end
  if #a <= EXACT_DIGITS then
    return tonumber(a) < tonumber(b)
  end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return false
end

-- a - b, or '0' when b is not less than a (a difference of times is never negative).
local function minus(a, b)
  if not less(b, a) then
    return '0'
  end
  if #a <= EXACT_DIGITS then
    -- b < a, so b is exact too.
    return string.format('%.0f', tonumber(a) - tonumber(b))
  end
  local digits, borrow = {}, 0
  local i, j = #a, #b
  while i > 0 do
    local digit = string.byte(a, i) - 48 - borrow
    if j > 0 then digit = digit - (string.byte(b, j) - 48) end
    if digit < 0 then
      digit, borrow = digit + 10, 1
    else
      borrow = 0
    end
    digits[#digits + 1] = digit
    i, j = i - 1, j - 1
  end
  local difference = string.gsub(string.reverse(table.concat(digits)), '^0+', '')
  return difference
end

-- a + b, saturating at U64_MAX. Every real time plus every real lease or TTL fits in a
-- double exactly and takes the first branch; only "never expires" (a TTL near u64::MAX)
-- takes the digit-by-digit one.
local function plus(a, b)
  if #a <= EXACT_DIGITS and #b <= EXACT_DIGITS then
    return string.format('%.0f', tonumber(a) + tonumber(b))
  end
  local digits, carry = {}, 0
  local i, j = #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local sum = carry
    if i > 0 then sum = sum + string.byte(a, i) - 48 end
    if j > 0 then sum = sum + string.byte(b, j) - 48 end
    digits[#digits + 1] = sum % 10
    carry = math.floor(sum / 10)
    i, j = i - 1, j - 1
  end
  local total = string.reverse(table.concat(digits))
  if less(U64_MAX, total) then
    return U64_MAX
  end
  return total
end

-- THE STORE'S CLOCK DECIDES: every lease and expiry is compared with Redis's clock, read
-- here, never with the clock of the instance that sent the script, so instances whose clocks
-- disagree still agree on every lease. `TIME` in a script that then writes needs effect
-- replication (the only mode since Redis 7; the default since Redis 5): replicas receive the
-- writes, not the script. `override` is the now of a test clock
-- (RedisStoreBuilder::clock), or '' in production.
local function clock(override)
  if override ~= '' then
    return override
  end
  local time = redis.call('TIME')
  local millis = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  return string.format('%.0f', millis)
end

-- Physical expiry: Redis deletes the key GRACE_MS after `expires_at`, counted from `now` (see
-- EXPIRY_GRACE in store.rs), or never when that is more than a century away. Logical expiry
-- (`expires_at` against `now`) is what decides every answer; the deletion only reclaims the
-- space. The subtraction is in doubles: exact for any real time, and a difference too large
-- to be exact is far past the century anyway.
local function expire(key, now, expires_at)
  local ttl = tonumber(expires_at) - tonumber(now)
  if ttl < 0 then
    ttl = 0
  end
  if ttl > MAX_PHYSICAL_TTL_MS then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIRE', key, string.format('%.0f', ttl + GRACE_MS))
  end
end
