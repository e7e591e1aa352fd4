-- Renew a client's leases in flight: each lives ARGV[1] µs from now (Redis TIME), recorded again if it had
-- expired meanwhile (the request is still running), never shortened. Port of gateway.store.inflight.renew.
-- KEYS[1] the client's in-flight sorted set. ARGV[1] lease length (µs), ARGV[2..] lease ids.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local deadline = now + tonumber(ARGV[1])
local score = string.format('%.17g', deadline)
local fresh = redis.call('EXISTS', KEYS[1]) == 0
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'GT', score, ARGV[i])
end
if fresh then
  redis.call('PEXPIREAT', KEYS[1], math.ceil(deadline / 1000))
else
  redis.call('PEXPIREAT', KEYS[1], math.ceil(deadline / 1000), 'GT')
end
return #ARGV - 1
