-- ipgate hot path: ONE round trip per request. Port of gateway.ratelimit.admit/gcra (keep them in step;
-- the contract tests hold both stores to the same numbers).
-- KEYS[1] rate-limit hash {r = TAT requests, k = TAT tokens}      (all four keys share the {client} tag)
-- KEYS[2] client state hash {s = detector state, t = tier, c = score}
-- KEYS[3] override hash {o = "allow"|"deny", t = pinned tier}
-- KEYS[4] in-flight sorted set {lease id -> deadline µs}  (gateway.store.inflight.take: keep them in step)
-- ARGV[1] tokens to reserve   ARGV[2] state TTL to extend to (ms, 0 = none)
-- ARGV[3] this request's lease id ('' = take no slot)   ARGV[4] lease length (µs)   ARGV[5] number of tiers
-- ARGV[6 + 5*i ..] per tier i: T_requests_us, burst_requests, T_tokens_us, burst_tokens, max_in_flight (0 = none)
-- Returns {allowed, tier, override, now_us,
--          r_allowed, r_limit, r_remaining, r_reset_us, r_retry_us,
--          k_allowed, k_limit, k_remaining, k_reset_us, k_retry_us,
--          slot, in_flight, in_flight_limit, [state]}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])  -- integer microseconds: exact in a double
local EPS = 1.0
local GRACE = 1000000
local MAX_AHEAD = 1125899906842624  -- 2^50 µs: gateway.ratelimit.MAX_AHEAD_US (exact doubles, valid expiry)
local tokens = tonumber(ARGV[1])
local state_ttl_ms = tonumber(ARGV[2])
local lease = ARGV[3]
local lease_us = tonumber(ARGV[4])
local ntiers = tonumber(ARGV[5])

local ov = redis.call('HMGET', KEYS[3], 'o', 't')
local override = ov[1]
local st = redis.call('HMGET', KEYS[2], 's', 't')
local tier = 0
if st[2] then tier = tonumber(st[2]) end
if ov[2] then tier = tonumber(ov[2]) end
if override == 'allow' then tier = 0 end
if tier < 0 then tier = 0 end
if tier > ntiers - 1 then tier = ntiers - 1 end
if st[1] and state_ttl_ms > 0 then
  redis.call('PEXPIRE', KEYS[2], state_ttl_ms, 'GT')  -- extend, never shorten
end

local base_arg = 6 + 5 * tier
local Tr = tonumber(ARGV[base_arg])
local br = tonumber(ARGV[base_arg + 1])
local Tk = tonumber(ARGV[base_arg + 2])
local bk = tonumber(ARGV[base_arg + 3])
local cap = tonumber(ARGV[base_arg + 4])

-- returns allowed(0/1), new TAT, remaining, reset_us, retry_us
local function gcra(tat, cost, T, burst)
  if cost < 0 then cost = 0 end
  local base = math.max(tat, now)
  local cap = burst * T
  local need = base + math.min(cost, burst) * T - now
  if need > cap + EPS then
    local rem = math.floor((cap - (base - now) + EPS) / T)
    if rem < 0 then rem = 0 end
    return 0, tat, rem, base - now, need - cap
  end
  local nt = math.min(base + cost * T, now + MAX_AHEAD)
  local rem = math.floor((cap - (nt - now) + EPS) / T)
  if rem < 0 then rem = 0 end
  return 1, nt, rem, nt - now, 0
end

local tats = redis.call('HMGET', KEYS[1], 'r', 'k')
local tat_r = tonumber(tats[1]) or 0
local tat_k = tonumber(tats[2]) or 0
local deny = override == 'deny'

local ra, rt, rr, rs, ry, ka, kt, kr, ks, ky
local allowed = 0
local slot, held = 0, 0
if not deny then
  ra, rt, rr, rs, ry = gcra(tat_r, 1, Tr, br)
  ka, kt, kr, ks, ky = gcra(tat_k, tokens, Tk, bk)
  if ra == 1 and ka == 1 then
    allowed = 1
    if cap > 0 and lease ~= '' then
      held = redis.call('ZCARD', KEYS[4])
      if held >= cap then
        -- only at the cap can leases past their deadline (a replica that died) change the answer: drop them
        -- here. Scores as %.17g: a bare number goes as 14 digits
        redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('%.17g', now))
        held = redis.call('ZCARD', KEYS[4])
      end
      if held >= cap then
        allowed = 0
      else
        local deadline = now + lease_us
        redis.call('ZADD', KEYS[4], string.format('%.17g', deadline), lease)
        -- the set lives as long as its latest lease (a new set has no TTL: GT would not set one)
        if held == 0 then
          redis.call('PEXPIREAT', KEYS[4], math.ceil(deadline / 1000))
        else
          redis.call('PEXPIREAT', KEYS[4], math.ceil(deadline / 1000), 'GT')
        end
        slot = 1
        held = held + 1
      end
    end
  end
  if allowed == 1 then
    -- %.17g round-trips a double exactly (tostring would keep only 14 digits)
    redis.call('HSET', KEYS[1], 'r', string.format('%.17g', rt), 'k', string.format('%.17g', kt))
    redis.call('PEXPIREAT', KEYS[1], math.ceil((math.max(rt, kt) + GRACE) / 1000))
  end
end
if allowed == 0 then
  -- report an uncharged bucket as it stands (zero-cost look)
  if deny or ra == 1 then ra, rt, rr, rs, ry = gcra(tat_r, 0, Tr, br) end
  if deny or ka == 1 then ka, kt, kr, ks, ky = gcra(tat_k, 0, Tk, bk) end
end

return {allowed, tier, override or '', now,
        ra, br, rr, math.floor(rs), math.ceil(ry),
        ka, bk, kr, math.floor(ks), math.ceil(ky), slot, held, cap, st[1]}
