--[[
  cancel: withdraw a job that has not started, or flag a running one.

  Atomic because a job moves between lists (tag, delayed set, worker queue) as it is placed and
  started: finding it and removing it must be one step, or the scheduler could place it (or a
  worker start it) between the look and the removal.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  job id
  Returns: 'cancelled' (it will never run), 'requested' (it is running; its cancel flag is set),
           'finished' (already completed, failed or cancelled), 'unknown'.
]]
local id = ARGV[1]
local job = K_JOB .. id
local f = rcall('HMGET', job, 'status', 'tid', 'worker')
local status, tid, w = f[1], f[2], f[3]
if not status then return 'unknown' end
if status == 'completed' or status == 'failed' or status == 'cancelled' then return 'finished' end
if status == 'active' then
  rcall('HSET', job, 'cancel', '1')
  return 'requested'
end
local cfg = load_config()
if status == 'pending' then
  -- A tag is only held for the strict retry at its head: withdrawing that job frees the tag.
  if rcall('LINDEX', K_TAG .. tid, 0) == id then rcall('ZREM', K_HELD, tid) end
  rcall('LREM', K_TAG .. tid, 1, id)
  refresh_tag(tid, cfg)
elseif status == 'delayed' then
  rcall('ZREM', K_DELAYED, id)
elseif status == 'assigned' then
  -- Out of the worker's queue and out of its batch; the worker releases the tag as usual when
  -- its queue drains.
  rcall('LREM', K_WQ .. w, 1, id)
  if rcall('ZSCORE', K_BOUND .. tid, w) then rcall('ZINCRBY', K_BOUND .. tid, -1, w) end
  rcall('HINCRBY', K_WS .. w, 'batch', -1)
  refresh_tag(tid, cfg)
end
count(status, -1)
finish(id, 'cancelled', 'error', '{"type":"Cancelled","message":"cancelled before it ran"}', now_ms())
wake_scheduler_if_work()
return 'cancelled'
