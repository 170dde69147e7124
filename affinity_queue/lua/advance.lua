--[[
  advance: a worker finishes its active job (if any) and starts its next one — one round trip.

  Atomic because the job's outcome, the worker's state and the release of its tag must agree: if a
  worker released its tag in a separate step, the scheduler could hand the tag to a second worker
  while the first still runs one of its jobs, and the tag would run twice at once.

  The tag is released when the worker's queue is drained (with a full batch the scheduler stops
  filling the queue, so "batch full and all done" is the same event).

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  worker id
  ARGV[2]  id of the job being finished, or '' when nothing is finished
  ARGV[3]  outcome of that job: 'completed' | 'failed'
  ARGV[4]  result (JSON text) when completed, error (JSON text) when failed
  ARGV[5]  '1' to start the next job, '0' when the worker is stopping
  Idempotent under a lost reply: a retry of a call that already started a job gets that job again.

  Returns: {id, type, identify_tag, payload, attempts} of the job now active; 0 when none;
           ERR_LEASE_LOST (-1) when the worker's lease is gone (its jobs were handed elsewhere);
           ERR_NOT_ACTIVE (-3) when the job to finish is not this worker's active job.
]]
local w, finished = ARGV[1], ARGV[2]
local state = K_WS .. w
if not rcall('ZSCORE', K_WORKERS, w) then return ERR_LEASE_LOST end
if finished ~= '' then
  if rcall('HGET', state, 'active') ~= finished then return ERR_NOT_ACTIVE end
  local field = 'error'
  if ARGV[3] == 'completed' then field = 'result' end
  rcall('HSET', K_JOB .. finished, 'status', ARGV[3], 'finished', now_ms(), field, ARGV[4])
  rcall('HSET', state, 'active', '')
  rcall('HINCRBY', K_COUNTS, 'active', -1)
  rcall('HINCRBY', K_COUNTS, ARGV[3], 1)
end
if ARGV[5] ~= '1' then return 0 end
-- Still active here means a retry whose first call started this job and lost its reply (the
-- worker only asks for a job when it has none): deliver it again rather than strand it.
local current = rcall('HGET', state, 'active')
if current and current ~= '' then
  local c = rcall('HMGET', K_JOB .. current, 'type', 'tag', 'payload', 'attempts')
  return { current, c[1], c[2], c[3], tonumber(c[4]) }
end
local id = rcall('LPOP', K_WQ .. w)
if not id then
  release(w, load_config())
  return 0
end
local job = K_JOB .. id
rcall('HSET', job, 'status', 'active', 'started', now_ms(), 'worker', w)
local attempts = rcall('HINCRBY', job, 'attempts', 1)
rcall('HSET', state, 'active', id)
rcall('HINCRBY', K_COUNTS, 'assigned', -1)
rcall('HINCRBY', K_COUNTS, 'active', 1)
local f = rcall('HMGET', job, 'type', 'tag', 'payload')
return { id, f[1], f[2], f[3], attempts }
