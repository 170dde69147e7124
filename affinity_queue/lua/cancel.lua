--[[
  cancel: withdraw a job that has not started, or flag a running one.

  Atomic because a job moves between lists (tag, delayed set, worker queue) as it is placed and
  started: finding it and removing it must be one step, or the scheduler could place it (or a
  worker start it) between the look and the removal.

  Bounded: a job deep in a long tag list is not searched for; it is marked a ghost, and dispatch
  drops it when it reaches the head.

  Safe to repeat: the reply is kept under the request token; a repeat returns it.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  request token ('' = none)
  ARGV[2]  job id
  Returns: 'cancelled' (it will never run), 'requested' (it is running; its cancel flag is set),
           'finished' (already completed, failed or cancelled), 'unknown'.
]]
local token, id = ARGV[1], ARGV[2]
local earlier = replay(token)
if earlier then return earlier end
local job = K_JOB .. id
local f = rcall('HMGET', job, 'status', 'tid', 'worker')
local status, tid, w = f[1], f[2], f[3]
if not status then return remember(token, 'unknown') end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return remember(token, 'finished')
end
if status == 'active' then
  rcall('HSET', job, 'cancel', '1')
  return remember(token, 'requested')
end
local cfg = load_config()
if status == 'pending' then
  local list = K_TAG .. tid
  -- A tag is only held for the strict retry at its head: withdrawing that job frees the tag.
  if rcall('LINDEX', list, 0) == id then
    rcall('ZREM', K_HELD, tid)
    rcall('LPOP', list)
  elseif rcall('LLEN', list) <= 1000 then
    rcall('LREM', list, 1, id)
  else
    rcall('SADD', K_GHOSTS, id)
  end
  backlog(tid, -1)
  refresh_tag(tid, cfg)
elseif status == 'delayed' then
  rcall('ZREM', K_DELAYED, delayed_member(id))
elseif status == 'assigned' then
  -- Out of the worker's queue and out of its batch (unless it is stopping, whose batch stays
  -- full); the worker releases the tag as usual when its queue drains.
  rcall('LREM', K_WQ .. w, 1, id)
  if rcall('ZSCORE', K_BOUND .. tid, w) and rcall('HGET', K_WS .. w, 'retiring') ~= '1' then
    rcall('ZINCRBY', K_BOUND .. tid, -1, w)
    rcall('HINCRBY', K_WS .. w, 'batch', -1)
  end
  backlog(tid, -1)
  refresh_tag(tid, cfg)
end
count(status, -1)
finish(id, 'cancelled', 'error', '{"type":"Cancelled","message":"cancelled before it ran"}', now_ms())
wake_scheduler_if_work()
return remember(token, 'cancelled')
