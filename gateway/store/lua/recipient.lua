-- Record that a client received output under a watermark key version, until now + TTL.
-- KEYS[1] recipients zset (member "version:client", score = expiry in ms). ARGV[1] member, ARGV[2] TTL ms.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now_ms + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'GT', exp, ARGV[1])  -- GT still adds new members
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2])))
return 1
