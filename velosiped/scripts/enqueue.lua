-- Enqueue a chunk of files at once, each file's jobs only if none of them is there already (the
-- check RQ's own unique-enqueue script makes for one job, here for a file's shards together),
-- with the file's payloads and its state in the batch (velosiped.state's own rule), atomically.
-- KEYS: queue list, payloads hash, batch files, counters, errors and jobs hashes, RQ's set of
--   queues, then per file: its jobs' keys, and its shards' progress key if it is sharded.
-- ARGV: queue key, options key, options JSON, now, n = length of the job hash template, the
--   template (field, value, ...: RQ's own serialization of the job, the same for every job of a
--   chunk), then per file: its URI, its job count, 1 if sharded, 2 if a group of small files (then
--   its file count m and the m files' URIs, the first being its own), else 0, then (job id,
--   payload) per job. A group is one job whose files each get their state, naming that job.
-- Returns per file (or group) 1 if its jobs were added, 0 if one of them was there already.
-- The options stay while their batch has work, and expire with it (state.lua): the batch names
-- them. Options written for files all refused expire after the retention (604800: the default).
local retention = tonumber(redis.call('HGET', KEYS[4], 'retention')) or 604800
redis.call('SET', ARGV[2], ARGV[3], 'NX', 'EX', retention)
local named = false
local n = tonumber(ARGV[5])
local template = {unpack(ARGV, 6, 5 + n)}
local a, k = 6 + n, 8
local added = {}
while a <= #ARGV do
  local file, jobs, sharded = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2] == '1'
  local files = {file}
  if ARGV[a + 2] == '2' then
    local m = tonumber(ARGV[a + 3])
    files = {unpack(ARGV, a + 4, a + 3 + m)}
    a = a + 1 + m
  end
  local free = true
  for j = 0, jobs - 1 do
    if redis.call('EXISTS', KEYS[k + j]) == 1 then free = false; break end
  end
  if free then
    local ids = {}
    for j = 0, jobs - 1 do
      local id = ARGV[a + 3 + 2 * j]
      ids[#ids + 1] = id
      redis.call('HSET', KEYS[k + j], unpack(template))
      redis.call('HSET', KEYS[2], id, ARGV[a + 4 + 2 * j])
      redis.call('RPUSH', KEYS[1], id)
    end
    if sharded then redis.call('DEL', KEYS[k + jobs]) end -- a new attempt starts from no shard done
    if not named then
      local before = redis.call('HGET', KEYS[4], 'options')
      if before and before ~= ARGV[2] then redis.call('EXPIRE', before, retention) end
      redis.call('HSET', KEYS[4], 'options', ARGV[2])
      redis.call('PERSIST', ARGV[2])
      named = true
    end
    for _, f in ipairs(files) do
      set_state(KEYS[3], KEYS[4], KEYS[5], KEYS[6], f, 'queued', 0, '', ARGV[4], table.concat(ids, ','))
    end
  end
  added[#added + 1] = free and 1 or 0
  k = k + jobs + (sharded and 1 or 0)
  a = a + 3 + 2 * jobs
end
redis.call('SADD', KEYS[7], ARGV[1])
return added
