-- KEYS: a batch's stats hash. ARGV: field, value. Keeps `velo report`'s merge of the batch's
-- statistics in the hash, if the hash is there still (a set on an expired one would outlive it).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
