-- The one rule moving a file between states, included by every script that moves one
-- (set_state.lua, enqueue.lua): a file moves queued -> running -> done | failed; a done file stays
-- done; the batch's counters move with it, so a job run twice (at least once delivery) counts once.
-- Returns 1 if the file moved, 0 if it was there already or is done.
local function set_state(files, counters, errors, file, state, rows, err, now)
  local old = redis.call('HGET', files, file)
  if old == state then return 0 end
  if old == 'done' then return 0 end
  redis.call('HSET', files, file, state)
  if old then redis.call('HINCRBY', counters, old, -1) else redis.call('HINCRBY', counters, 'total', 1) end
  redis.call('HINCRBY', counters, state, 1)
  if state == 'done' then
    redis.call('HINCRBY', counters, 'rows', rows)
    redis.call('HDEL', errors, file)
  elseif state == 'failed' then
    redis.call('HSET', errors, file, err)
  end
  if state == 'running' and not redis.call('HGET', counters, 'started_at') then
    redis.call('HSET', counters, 'started_at', now)
  end
  if state == 'done' or state == 'failed' then redis.call('HSET', counters, 'updated_at', now) end
  return 1
end
