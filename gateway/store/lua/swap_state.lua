-- save_state.lua, only if the stored state is still the one the caller derived its state from (a detection
-- state is read before a request and written after its answer: another replica may have written in between,
-- and writing over it would erase that replica's evidence). KEYS[1] state hash. ARGV: state, tier, score,
-- TTL ms, SHA-1 (hex) of the expected stored state ('' : none expected; an empty state reads as none). Returns {1} when written, else {0,
-- the stored state} for the caller to merge its steps into and try again.
local cur = redis.call('HGET', KEYS[1], 's')
local have = ''
if cur and #cur > 0 then have = redis.sha1hex(cur) end
if have ~= ARGV[5] then
  return {0, cur}
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 't', ARGV[2], 'c', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1}
