-- The one rule moving a file between states, included by every script that moves one
-- (set_state.lua, enqueue.lua): a file moves queued -> running -> done | failed; a done file stays
-- done until a new job of it is enqueued; the batch's counters move with it, so a job run twice
-- (at least once delivery) counts once.
-- A queued or running file's value names its jobs too ('queued velo-a,velo-b'), so a file whose
-- jobs were removed behind Velosiped's back (`rq empty`) can be found (dispatcher/lost.py).
-- A failed file takes its statistics (the batch's stats hash, named counters .. ':stats': see
-- keys.batch_stats, and stats.lua) out of the batch: a file that fails contributes nothing.
-- A batch whose files are all done or failed expires, keys and all, after its retention (the
-- counters' 'retention' field, written at its creation), with its options ('options' names
-- them: enqueue.lua); new work in it (retry, watch) keeps it.
-- Returns 1 if the file moved, 0 if it was there already or is done.
local function set_state(files, counters, errors, jobs, file, state, rows, err, now, refs)
  local old = redis.call('HGET', files, file)
  local was = old and string.match(old, '^%a+')
  local value = state
  if state == 'queued' and refs and refs ~= '' then
    value = state .. ' ' .. refs
  elseif state == 'running' and old and #old > #was then
    value = state .. string.sub(old, #was + 1) -- keeps the file's jobs
  end
  if was == state then
    if old ~= value then redis.call('HSET', files, file, value) end -- enqueued again, new jobs
    return 0
  end
  -- A done file stays done for its jobs (a late rerun changes nothing); a new job of it (a new
  -- version `velo watch` enqueues into the same batch) starts it afresh, so its fate is seen.
  if was == 'done' and state ~= 'queued' then return 0 end
  redis.call('HSET', files, file, value)
  if was then redis.call('HINCRBY', counters, was, -1) else redis.call('HINCRBY', counters, 'total', 1) end
  redis.call('HINCRBY', counters, state, 1)
  if state == 'done' then
    redis.call('HINCRBY', counters, 'rows', rows)
    redis.call('HDEL', errors, file)
  elseif state == 'failed' then
    redis.call('HSET', errors, file, err)
    if redis.call('HDEL', counters .. ':stats', file) == 1 then
      redis.call('HINCRBY', counters .. ':stats', 'velo:version', 1) -- a merge kept is stale (stats.lua)
    end
  end
  if state == 'running' and not redis.call('HGET', counters, 'started_at') then
    redis.call('HSET', counters, 'started_at', now)
  end
  if state == 'done' or state == 'failed' then
    redis.call('HSET', counters, 'updated_at', now)
    -- wakes a waiting `velo run` (keys.batch_progress); pcall: a Redis ACL without the channel costs the wake only
    redis.pcall('PUBLISH', counters .. ':progress', state)
  end
  local c = redis.call('HMGET', counters, 'total', 'done', 'failed', 'retention', 'options')
  local all = {files, counters, errors, jobs, counters .. ':stats'}
  if c[5] then all[6] = c[5] end -- (a missing field is false, not nil)
  if (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0) >= (tonumber(c[1]) or 0) then
    -- 604800: settings.BATCH_RETENTION's default, for a batch created before retention existed
    local retention = tonumber(c[4]) or 604800
    for _, key in ipairs(all) do redis.call('EXPIRE', key, retention) end
  elseif redis.call('PTTL', counters) > 0 then -- finished, now given new work
    for _, key in ipairs(all) do redis.call('PERSIST', key) end
  end
  return 1
end
