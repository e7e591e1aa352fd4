-- The index of client overrides (deny, allow, pinned tier) that every gateway process reads for its failure
-- mode: during a Redis outage a denied client must stay denied also on a process that never answered it.
-- KEYS[1] index zset (member client id, score = the override's expiry, ms). ARGV[1] client, ARGV[2] TTL ms
-- (0: the override was cleared), ARGV[3] most members kept (the soonest to expire go first).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('ZADD', KEYS[1], now_ms + ttl, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local n = redis.call('ZCARD', KEYS[1])
local max = tonumber(ARGV[3])
if n > max then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max - 1) end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2]))) end
return 1
