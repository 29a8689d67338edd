-- Enqueue a chunk of files at once, each file's jobs only if none of them is there already (the
-- check RQ's own unique-enqueue script makes for one job, here for a file's shards together),
-- with the file's payloads and its state in the batch (velosiped.state's own rule), atomically.
-- KEYS: queue list, payloads hash, batch files, counters and errors hashes, RQ's set of queues,
--   then per file: its jobs' keys, and its shards' progress key if it is sharded.
-- ARGV: queue key, options key, options JSON, now, n = length of the job hash template, the
--   template (field, value, ...: RQ's own serialization of the job, the same for every job of a
--   chunk), then per file: its URI, its job count, 1 if sharded else 0, then (job id, payload) per job.
-- Returns per file 1 if its jobs were added, 0 if one of them was there already.
redis.call('SET', ARGV[2], ARGV[3])
local n = tonumber(ARGV[5])
local template = {unpack(ARGV, 6, 5 + n)}
local a, k = 6 + n, 7
local added = {}
while a <= #ARGV do
  local file, jobs, sharded = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2] == '1'
  local free = true
  for j = 0, jobs - 1 do
    if redis.call('EXISTS', KEYS[k + j]) == 1 then free = false; break end
  end
  if free then
    for j = 0, jobs - 1 do
      local id = ARGV[a + 3 + 2 * j]
      redis.call('HSET', KEYS[k + j], unpack(template))
      redis.call('HSET', KEYS[2], id, ARGV[a + 4 + 2 * j])
      redis.call('RPUSH', KEYS[1], id)
    end
    if sharded then redis.call('DEL', KEYS[k + jobs]) end -- a new attempt starts from no shard done
    set_state(KEYS[3], KEYS[4], KEYS[5], file, 'queued', 0, '', ARGV[4])
  end
  added[#added + 1] = free and 1 or 0
  k = k + jobs + (sharded and 1 or 0)
  a = a + 3 + 2 * jobs
end
redis.call('SADD', KEYS[6], ARGV[1])
return added
