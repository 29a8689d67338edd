-- A shard's rows are recorded once; the job recording the last one assembles the file.
-- KEYS: the file's shard hash. ARGV: shard index, its rows, shard count, ttl.
if redis.call('HEXISTS', KEYS[1], 'failed') == 1 then return 'failed' end
if redis.call('HEXISTS', KEYS[1], 'assembled') == 1 then return 'assembled' end
if redis.call('HSET', KEYS[1], 'rows:' .. ARGV[1], ARGV[2]) == 1 then  -- a re-run shard counts once
  redis.call('HINCRBY', KEYS[1], 'recorded', 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if tonumber(redis.call('HGET', KEYS[1], 'recorded')) >= tonumber(ARGV[3]) then return 'assemble' end
return 'wait'
