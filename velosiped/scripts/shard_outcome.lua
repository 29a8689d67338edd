-- A sharded file's outcome: the first of 'assembled' or 'failed' wins.
-- KEYS: the file's shard hash. ARGV: 'assembled' or 'failed', its value, ttl.
local other = ARGV[1] == 'failed' and 'assembled' or 'failed'
if redis.call('HEXISTS', KEYS[1], other) == 1 then return 0 end
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
