-- Give back (delta < 0) or charge more (delta > 0) tokens once the real usage is known, and give back the
-- request's in-flight slot. Port of gateway.ratelimit.reconcile_tat and gateway.store.inflight.release.
-- KEYS[1] rate-limit hash. KEYS[2] (optional) the in-flight sorted set. ARGV[1] delta (0: tokens untouched),
-- ARGV[2] T_tokens_us, ARGV[3] the TAT the reservation was admitted with, µs ('' = no bound): only what lies
-- ahead of now is given back. ARGV[4] (with KEYS[2]) the lease id to remove.
if KEYS[2] then redis.call('ZREM', KEYS[2], ARGV[4]) end
local delta = tonumber(ARGV[1])
if delta == 0 then return 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T = tonumber(ARGV[2])
local tats = redis.call('HMGET', KEYS[1], 'r', 'k')
local tat_r = tonumber(tats[1]) or 0
local tat_k = tonumber(tats[2])
if not tat_k then
  if delta < 0 then return 0 end  -- the bucket already refilled completely; nothing to give back
  tat_k = 0
end
local nk
if delta >= 0 then
  nk = math.min(math.max(tat_k, now) + delta * T, now + 1125899906842624)  -- MAX_AHEAD_US (2^50)
elseif tat_k > now then
  local give = -delta * T
  local until_us = tonumber(ARGV[3])
  if until_us then
    local ahead = until_us - now
    if ahead <= 0 then return 0 end  -- the whole reservation is behind us: repaid by time already
    if ahead < give then give = ahead end
  end
  nk = math.max(tat_k - give, now)
else
  nk = tat_k
end
redis.call('HSET', KEYS[1], 'r', string.format('%.17g', tat_r), 'k', string.format('%.17g', nk))
redis.call('PEXPIREAT', KEYS[1], math.ceil((math.max(tat_r, nk, now) + 1000000) / 1000))
return 1
