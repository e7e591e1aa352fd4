-- Take or renew a named lease. KEYS[1] lease key. ARGV[1] owner, ARGV[2] TTL ms. Returns 1 if held by owner.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
