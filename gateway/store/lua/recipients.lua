-- One page of live recipients: ZSCAN of KEYS[1] from cursor ARGV[1] (COUNT ARGV[2]), keeping the members whose
-- expiry (score, ms) is still ahead of Redis TIME. Returns {next cursor, member, member, ...}; cursor "0": done.
-- Paged: the whole set in one reply (ZRANGEBYSCORE) outlasted the store's per-call deadline from ~100 000
-- recipients, and that timeout declared the store unavailable for every request.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local page = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {page[1]}
local flat = page[2]
for i = 1, #flat, 2 do
  if tonumber(flat[i + 1]) > now_ms then
    out[#out + 1] = flat[i]
  end
end
return out
