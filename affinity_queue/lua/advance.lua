--[[
  advance: a worker finishes its active run (one job, or the several it took at once) and starts
  its next one — one round trip.

  Atomic because the outcomes, the worker's state and the release of its tag must agree: if a
  worker released its tag in a separate step, the scheduler could hand the tag to a second worker
  while the first still runs one of its jobs, and the tag would run twice at once.

  A run is the jobs a worker took in one call, in order: one job, a batch for a batch handler
  (jobs of one type), or several for a per-task handler that runs them one after the other. The
  worker's state field `active` lists them (space-separated ids). The caller reports an outcome
  for a prefix of the run; the jobs it did not run go back to the front of its queue, unstarted
  (their attempt is not counted), and come back in its next run.

  The tag is released when the worker's queue is drained (with a full batch the scheduler stops
  filling the queue, so "batch full and all done" is the same event). The worker then goes idle
  and leaves `take` and its batch types in its state: whoever binds the worker next starts that
  run itself. That is this call first: it places what the next dispatch would (place_now), and
  when that binds this worker again (its tag's next batch, the next ready tag) the run is the
  reply; a run for another worker goes with that worker's wake-up.

  A job whose cancellation was requested and that did not complete ends as cancelled (never
  retried, never a dead letter). A queued id whose record is gone (deleted by hand, evicted) is
  dropped, not started: the run is the jobs that remain.
  A retry in strict order puts the job back at the head of its tag, with the worker's queued jobs
  of the tag behind it, holds the tag until the retry is due and releases the worker: later jobs
  of the tag cannot overtake it (it must be the last job of the run that ran). In relaxed order
  the job waits in the delayed set and the worker goes on.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  worker id
  ARGV[2]  take: the most jobs to start as the next run; 0 when the worker is stopping
  ARGV[3]  for a retry: its delay in ms
  ARGV[4]  for a retry: 'strict' | 'relaxed' order
  ARGV[5]  m: how many batch types follow
  ARGV[6..] m pairs (type, most jobs of one batch): a run that starts with a job of such a type
           takes up to that many jobs of that type; a run of other jobs takes up to `take` jobs
           and stops before a job of a batch type; then the active run, per job:
           id, outcome ('completed' | 'failed' | 'retry' | '' for not run), JSON (the result
           when completed, the error otherwise), how many ms before this call the job
           started and ended ('' and '': when the call that took it started it), and the
           attempt it ran as ('': unchecked), six values per job; nothing when nothing is
           finished.
  Safe to repeat: a run is finished only while it is the worker's active run, at the attempt the
  report names (a repeat gets ERR_NOT_ACTIVE, also when dispatch has started the same job again
  meanwhile, and the caller then asks again without finishing), and a worker that already
  has an active run gets that run again instead of a new one. A call that ran none of its run and
  takes again changes nothing and gets the same run back (sent back and taken again, it would be
  the same run, and a repeat could not tell it had been recorded). A run that dispatch started
  is delivered the same way when its wake-up was lost.

  Returns: {id, type, identify_tag, payload, attempts, max_attempts, backoff ms, timeout ms,
           wait ms (from its add, or the end of its delay, to this start)} per job of the run
           now active, flattened; 0 when none;
           ERR_LEASE_LOST (-1) when the worker's lease is gone or expired (its jobs are handed
           elsewhere: it must not start or finish anything);
           ERR_NOT_ACTIVE (-3) when the run to finish is not this worker's active run.
]]
local w = ARGV[1]
local state = K_WS .. w
local now = now_ms()
if not live_lease(w, now) then return ERR_LEASE_LOST end
local take = tonumber(ARGV[2])
-- A worker that calls advance is not waiting for a wake-up, and this call sees whatever one
-- would announce (a carried run is its active run): any left is stale. After a failover that
-- lost the pop of a carried run, the run would otherwise be delivered again once finished.
rcall('DEL', K_WAKEW .. w)
local m = tonumber(ARGV[5])
local batch_max = {}
for i = 6, 5 + 2 * m, 2 do batch_max[ARGV[i]] = tonumber(ARGV[i + 1]) end
local first = 6 + 2 * m
local CANCELLED_UNRUN = '{"type":"Cancelled","message":"cancelled before it ran"}'
local s = rcall('HMGET', state, 'active', 'ended', 'tid')
-- The worker goes idle: what it takes next, for dispatch to start its next run when it binds
-- it (the run then comes with the worker's wake-up, without a call of this script).
local function idle()
  if take > 0 then
    rcall('HSET', state, 'take', take, 'batches', m > 0 and cjson.encode(batch_max) or '')
  end
end

-- The rows of run `ids` (space-separated), as this script returns a run.
local function rows_of(ids)
  local out = {}
  for id in string.gmatch(ids, '%S+') do
    local f = rcall('HMGET', K_JOB .. id, unpack(RUN_FIELDS))
    run_row(out, id, f, f[10])
  end
  return out
end

-- The worker is free: it goes idle and gives its tag up, then what the next dispatch would
-- place is placed here (place), waking the scheduler only for what is left. This worker may be
-- bound again at once (its tag's next batch, or the next tag): that run is the reply, rows as
-- returned, without a wake-up; else 0.
local function free(cfg, tids)
  idle()
  release(w, cfg, now)
  for t in pairs(tids) do refresh_tag(t, cfg) end
  return place_now(cfg, now, take > 0 and w or nil) or 0
end
local current = s[1]  -- the worker's active run, '' or nil when none
-- The changes to the counts hash, written once at the end: a run that ends and the next that
-- starts cancel out in 'active'.
local active_delta, assigned_delta = 0, 0
local function counted()
  count('active', active_delta)
  count('assigned', assigned_delta)
end
local ran = false  -- whether any job of the run being finished ran
for i = first + 1, #ARGV, 6 do ran = ran or ARGV[i] ~= '' end
if first <= #ARGV and (ran or take < 1) then
  local ids = {}
  for i = first, #ARGV, 6 do ids[#ids + 1] = ARGV[i] end
  if current ~= table.concat(ids, ' ') then return ERR_NOT_ACTIVE end
  -- The same ids may be a later run: a repeat of a report whose first call landed (a retry
  -- went idle) after dispatch started the job again as a carried run, which never ran. A run's
  -- jobs start together, so its first job's attempt tells which run this is.
  local attempt = ARGV[first + 5]
  if attempt ~= '' and rcall('HGET', K_JOB .. ARGV[first], 'attempts') ~= attempt then
    return ERR_NOT_ACTIVE
  end
  current = ''
  active_delta = -#ids
  -- Not run: back to the front of the worker's queue, in order, as if never taken (or
  -- cancelled, if that was requested meanwhile: it never ran).
  local ends = {}
  local back, back_tids = {}, {}  -- the unrun jobs, last first (one LPUSH); per tag, how many
  for i = #ARGV - 5, first, -6 do
    if ARGV[i + 1] == '' then
      local job = K_JOB .. ARGV[i]
      local f = rcall('HMGET', job, 'cancel', 'tid', 'attempts')
      if f[1] == '1' then
        ends[#ends + 1] = { ARGV[i], 'cancelled', 'error', CANCELLED_UNRUN, nil, nil, f[2] }
      else
        back[#back + 1] = ARGV[i]
        if f[2] then back_tids[f[2]] = (back_tids[f[2]] or 0) + 1 end
        rcall('HSET', job, 'status', 'assigned', 'attempts', int((tonumber(f[3]) or 1) - 1))
        rcall('HDEL', job, 'started')
      end
    end
  end
  if #back > 0 then
    rcall('LPUSH', K_WQ .. w, unpack(back))
    for t, n in pairs(back_tids) do backlog(t, n) end  -- waiting to start again
    assigned_delta = assigned_delta + #back
  end
  local held = nil  -- a strict retry: it goes back to its tag after the others are recorded
  -- A job's record says when it really ran (taken with others, it started later than the call
  -- that took it), never before the end of the worker's previous job: the worker's clock and
  -- Redis's differ by a round trip, and the records must not show a tag running twice at once.
  local last_end = tonumber(s[2]) or 0
  -- The run's jobs came from the worker's queue, which holds jobs of the tag it is bound to.
  local tid = s[3] ~= '' and s[3] or nil
  for i = first, #ARGV, 6 do
    local finished, outcome, data = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local job = K_JOB .. finished
    local started, ended = nil, now
    if outcome ~= '' and ARGV[i + 3] ~= '' then
      started = math.max(now - tonumber(ARGV[i + 3]), last_end)
      ended = math.max(now - tonumber(ARGV[i + 4]), started)
    end
    if outcome ~= '' then last_end = ended end
    if outcome ~= '' and outcome ~= 'completed' and rcall('HGET', job, 'cancel') == '1' then
      outcome = 'cancelled'  -- its cancellation was requested: no more attempts
    end
    if outcome == 'completed' then
      ends[#ends + 1] = { finished, 'completed', 'result', data, started, ended, tid }
    elseif outcome == 'failed' or outcome == 'cancelled' then
      add_history(finished, data)
      ends[#ends + 1] = { finished, outcome, 'error', data, started, ended, tid }
    elseif outcome == 'retry' then
      if started then rcall('HSET', job, 'started', started) end
      add_history(finished, data)
      local due = now + tonumber(ARGV[3])
      rcall('HSET', job, 'error', data, 'due', due)
      wake_scheduler()  -- to re-plan its sleep
      if ARGV[4] == 'strict' then
        held = finished
      else
        rcall('HSET', job, 'status', 'delayed', 'front', '1')
        rcall('ZADD', K_DELAYED, due, delayed_member(finished))
        count('delayed', 1)
      end
    end
  end
  if #ends > 0 then finish_run(ends, now) end
  rcall('HSET', state, 'active', '', 'ended', last_end)
  if held then
    local queued = rcall('LRANGE', K_WQ .. w, 0, -1)
    rcall('DEL', K_WQ .. w)
    assigned_delta = assigned_delta - #queued
    counted()
    local tids = {}
    -- The queued jobs (waiting already), then the retried one in front of them.
    local back = requeue_front(queued, tids, now, s[3])
    count('pending', back + requeue_front({ held }, tids, now, nil))
    local tid = rcall('HGET', K_JOB .. held, 'tid')
    -- GT: with concurrency > 1, a shorter retry must not shorten a longer one's hold.
    if tid then rcall('ZADD', K_HELD, 'GT', now + tonumber(ARGV[3]), tid) end
    return free(load_config(), tids)
  end
end
if take < 1 then
  counted()
  return 0
end
-- Still active here means a retry whose first call started this run and lost its reply (the
-- worker only asks for a run when it has none), or a run that dispatch started and whose wake-up
-- the worker has not read (dropped above): deliver it again rather than strand it.
if current and current ~= '' then
  counted()
  return rows_of(current)
end
local out, run, dropped = start_run(w, s[3], take, batch_max, now)
local started = #run
assigned_delta = assigned_delta - started - dropped
active_delta = active_delta + started
counted()
if started == 0 then return free(load_config(), {}) end  -- the settings matter only here
return out
