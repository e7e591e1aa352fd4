-- Write back a client's detector state kept in process memory during an outage (failure_mode local), unless
-- Redis already holds a tier at least as high: an escalation reached during the outage survives recovery, and
-- a state another replica raised meanwhile is never lowered. KEYS[1] state hash. ARGV: state, tier, score,
-- TTL ms. Returns 1 when written. The TTL never shrinks (a key written by HSET alone would have none).
local cur = redis.call('HGET', KEYS[1], 't')
if cur and tonumber(cur) == nil then
  return redis.error_reply('ERR ipgate: stored tier is not a number')
end
if cur and tonumber(cur) >= tonumber(ARGV[2]) then return 0 end
local pttl = redis.call('PTTL', KEYS[1])
redis.call('HSET', KEYS[1], 's', ARGV[1], 't', ARGV[2], 'c', ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.max(pttl, tonumber(ARGV[4])))
return 1
