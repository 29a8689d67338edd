-- KEYS: the batch's stats hash, its counters hash. ARGV: file, the file's statistics (JSON).
-- Stores a scored file's statistics in its batch, before the file is recorded done: the hash
-- expires with the batch's other keys (state.lua). A batch already finished (a late run of a done
-- file) gives the hash its time left; a batch gone (expired) gets nothing. Returns 1 if stored.
-- Each change counts in the hash's 'velo:version' field, so a merge `velo report` kept
-- ('velo:merged', see velosiped.sketch) is known current or not.
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'velo:version', 1)
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
