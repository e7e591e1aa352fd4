-- Write a client's detector state, tier and score with a TTL, atomically (a crash between the write and
-- the expiry must never leave a key without TTL). KEYS[1] state hash. ARGV: state, tier, score, TTL ms.
redis.call('HSET', KEYS[1], 's', ARGV[1], 't', ARGV[2], 'c', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
