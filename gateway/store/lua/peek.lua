-- ipgate pre-admission look: what hot_path.lua would answer for a request now, writing NOTHING (no charge, no
-- slot, no TTL extended). Port of gateway.store.memory.MemoryStore.peek (keep them, and hot_path.lua, in step).
-- KEYS as hot_path.lua: [1] rate-limit hash  [2] client state hash  [3] override hash  [4] in-flight sorted set
-- ARGV[1] tokens the request would reserve   ARGV[2] number of tiers
-- ARGV[3 + 5*i ..] per tier i: T_requests_us, burst_requests, T_tokens_us, burst_tokens, max_in_flight (0 = none)
-- Returns {allowed, tier, override, now_us,
--          r_allowed, r_limit, r_remaining, r_reset_us, r_retry_us,
--          k_allowed, k_limit, k_remaining, k_reset_us, k_retry_us,
--          in_flight, in_flight_limit}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local EPS = 1.0
local MAX_AHEAD = 1125899906842624
local tokens = tonumber(ARGV[1])
local ntiers = tonumber(ARGV[2])

local ov = redis.call('HMGET', KEYS[3], 'o', 't')
local override = ov[1]
local tier = tonumber(redis.call('HGET', KEYS[2], 't')) or 0
if ov[2] then tier = tonumber(ov[2]) end
if override == 'allow' then tier = 0 end
if tier < 0 then tier = 0 end
if tier > ntiers - 1 then tier = ntiers - 1 end

local base_arg = 3 + 5 * tier
local Tr = tonumber(ARGV[base_arg])
local br = tonumber(ARGV[base_arg + 1])
local Tk = tonumber(ARGV[base_arg + 2])
local bk = tonumber(ARGV[base_arg + 3])
local cap = tonumber(ARGV[base_arg + 4])

-- hot_path.lua's gcra without the new TAT: allowed(0/1), remaining, reset_us, retry_us
local function gcra(tat, cost, T, burst)
  if cost < 0 then cost = 0 end
  local base = math.max(tat, now)
  local cap = burst * T
  local need = base + math.min(cost, burst) * T - now
  if need > cap + EPS then
    local rem = math.floor((cap - (base - now) + EPS) / T)
    if rem < 0 then rem = 0 end
    return 0, rem, base - now, need - cap
  end
  local nt = math.min(base + cost * T, now + MAX_AHEAD)
  local rem = math.floor((cap - (nt - now) + EPS) / T)
  if rem < 0 then rem = 0 end
  return 1, rem, nt - now, 0
end

local tats = redis.call('HMGET', KEYS[1], 'r', 'k')
local tat_r = tonumber(tats[1]) or 0
local tat_k = tonumber(tats[2]) or 0
local deny = override == 'deny'

local ra, rr, rs, ry, ka, kr, ks, ky
local allowed, held = 0, 0
if not deny then
  ra, rr, rs, ry = gcra(tat_r, 1, Tr, br)
  ka, kr, ks, ky = gcra(tat_k, tokens, Tk, bk)
  if ra == 1 and ka == 1 then
    allowed = 1
    if cap > 0 then
      -- the live leases: those whose deadline is still ahead (hot_path.lua prunes the others at the cap)
      held = redis.call('ZCOUNT', KEYS[4], '(' .. string.format('%.17g', now), '+inf')
      if held >= cap then allowed = 0 end
    end
  end
end
if allowed == 0 then
  if deny or ra == 1 then ra, rr, rs, ry = gcra(tat_r, 0, Tr, br) end
  if deny or ka == 1 then ka, kr, ks, ky = gcra(tat_k, 0, Tk, bk) end
end

return {allowed, tier, override or '', now,
        ra, br, rr, math.floor(rs), math.ceil(ry),
        ka, bk, kr, math.floor(ks), math.ceil(ky), held, cap}
