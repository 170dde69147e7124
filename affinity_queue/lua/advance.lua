--[[
  advance: a worker finishes its active job (if any) and starts its next one — one round trip.

  Atomic because the job's outcome, the worker's state and the release of its tag must agree: if a
  worker released its tag in a separate step, the scheduler could hand the tag to a second worker
  while the first still runs one of its jobs, and the tag would run twice at once.

  The tag is released when the worker's queue is drained (with a full batch the scheduler stops
  filling the queue, so "batch full and all done" is the same event).

  A job whose cancellation was requested and that did not complete ends as cancelled (never
  retried, never a dead letter).
  A retry in strict order puts the job back at the head of its tag, with the worker's queued jobs
  of the tag behind it, holds the tag until the retry is due and releases the worker: later jobs
  of the tag cannot overtake it. In relaxed order the job waits in the delayed set and the worker
  goes on.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  worker id
  ARGV[2]  id of the job being finished, or '' when nothing is finished
  ARGV[3]  outcome of that job: 'completed' | 'failed' | 'retry'
  ARGV[4]  result (JSON text) when completed, error (JSON text) otherwise
  ARGV[5]  '1' to start the next job, '0' when the worker is stopping
  ARGV[6]  for a retry: its delay in ms
  ARGV[7]  for a retry: 'strict' | 'relaxed' order
  Safe to repeat: a job is finished only while it is the worker's active one (a repeat gets
  ERR_NOT_ACTIVE, and the caller then asks again without finishing), and a worker that already
  has an active job gets that job again instead of a new one.

  Returns: {id, type, identify_tag, payload, attempts, max_attempts, backoff ms, timeout ms,
           wait ms (from its add, or the end of its delay, to this start)} of the job now
           active; 0 when none;
           ERR_LEASE_LOST (-1) when the worker's lease is gone or expired (its jobs are handed
           elsewhere: it must not start or finish anything);
           ERR_NOT_ACTIVE (-3) when the job to finish is not this worker's active job.
]]
local w, finished, outcome = ARGV[1], ARGV[2], ARGV[3]
local state = K_WS .. w
local now = now_ms()
if not live_lease(w, now) then return ERR_LEASE_LOST end
local cfg = load_config()
local take_next = ARGV[5] == '1'
if finished ~= '' then
  if rcall('HGET', state, 'active') ~= finished then return ERR_NOT_ACTIVE end
  rcall('HSET', state, 'active', '')
  count('active', -1)
  local job = K_JOB .. finished
  if outcome ~= 'completed' and rcall('HGET', job, 'cancel') == '1' then
    outcome = 'cancelled'  -- its cancellation was requested: no more attempts
  end
  if outcome == 'completed' then
    finish(finished, 'completed', 'result', ARGV[4], now)
  elseif outcome == 'failed' or outcome == 'cancelled' then
    add_history(finished, ARGV[4])
    finish(finished, outcome, 'error', ARGV[4], now)
  else
    add_history(finished, ARGV[4])
    local due = now + tonumber(ARGV[6])
    rcall('HSET', job, 'error', ARGV[4], 'due', due)
    wake_scheduler()  -- to re-plan its sleep
    if ARGV[7] == 'strict' then
      local ids = rcall('LRANGE', K_WQ .. w, 0, -1)
      rcall('DEL', K_WQ .. w)
      count('assigned', -#ids)
      local tids = {}
      -- The queued jobs (waiting already), then the retried one in front of them.
      local back = requeue_front(ids, tids, now, rcall('HGET', state, 'tid'))
      count('pending', back + requeue_front({ finished }, tids, now, nil))
      local tid = rcall('HGET', job, 'tid')
      -- GT: with concurrency > 1, a shorter retry must not shorten a longer one's hold.
      if tid then rcall('ZADD', K_HELD, 'GT', due, tid) end
      release(w, cfg)
      for t in pairs(tids) do refresh_tag(t, cfg) end
      return 0
    end
    rcall('HSET', job, 'status', 'delayed', 'front', '1')
    rcall('ZADD', K_DELAYED, due, delayed_member(finished))
    count('delayed', 1)
  end
end
if not take_next then return 0 end
local fields = { 'type', 'tag', 'payload', 'attempts', 'max_attempts', 'backoff', 'timeout',
  'created', 'due', 'started', 'tid' }
-- The reply for a started job: its fields, and how long it waited (start - max(add, due)).
local function started(id, f)
  local from = math.max(tonumber(f[8]) or 0, tonumber(f[9]) or 0)
  local waited = math.max(0, (tonumber(f[10]) or from) - from)
  return { id, f[1], f[2], f[3], f[4], f[5], f[6], f[7], waited }
end
-- Still active here means a retry whose first call started this job and lost its reply (the
-- worker only asks for a job when it has none): deliver it again rather than strand it.
local current = rcall('HGET', state, 'active')
if current and current ~= '' then
  return started(current, rcall('HMGET', K_JOB .. current, unpack(fields)))
end
local id = rcall('LPOP', K_WQ .. w)
if not id then
  release(w, cfg)
  return 0
end
local job = K_JOB .. id
rcall('HSET', job, 'status', 'active', 'started', now, 'worker', w)
rcall('HINCRBY', job, 'attempts', 1)
rcall('HSET', state, 'active', id)
count('assigned', -1)
count('active', 1)
local f = rcall('HMGET', job, unpack(fields))
backlog(f[11], -1)
return started(id, f)
