--[[
  add: accept tasks; each joins the end of its tag's pending list (or the delayed set).

  Atomic because the job record, its place in the tag's list, the counters and the tag's ready
  state must change together: a scheduler that ran in between would see a job it cannot place,
  or a tag that looks empty while it holds work. The deduplication check and the per-tag limit
  are part of the same step, so two producers cannot both pass them.

  KEYS: the shared table (see _shared.lua); uses job, tag, bound, seq, counts, ready:*, idle,
        wake, config, limits, turns, delayed, held, paused-tags, dedupe.
  ARGV[1]  n, the number of tasks
  ARGV[2]  max attempts per task
  ARGV[3]  retry backoff base in ms
  ARGV[4]  timeout in ms (0 = none)
  ARGV[5]  delay in ms before the tasks are due (0 = due now)
  ARGV[6]  or the time they are due, in ms since the epoch (0 = use the delay); a time in the
           past means now
  ARGV[7]  deduplication key, hex-encoded ('' = none; only with n = 1)
  ARGV[8]  deduplication window in ms
  ARGV[9]  most tasks of one tag that may wait to start (0 = no limit)
  ARGV[10 + 4i..] for task i (0-based): type, identify_tag, tag id (hex), payload (JSON text)
  Returns: {id of the first job (the others follow consecutively), Redis time in ms, 0,
           due time in ms (0 = due now)};
           {id of the existing job, time, 1} when the deduplication key is still taken;
           {ERR_TAG_FULL (-5), tag id} when a tag would exceed its limit (nothing written).
]]
local n = tonumber(ARGV[1])
local now = now_ms()
local dedupe = ARGV[7]
if dedupe ~= '' then
  local existing = rcall('GET', K_DEDUPE .. dedupe)
  -- A key that outlived its job's record (retention) admits the task again.
  if existing and rcall('EXISTS', K_JOB .. existing) == 1 then return { existing, now, 1, 0 } end
end
local limit = tonumber(ARGV[9])
if limit > 0 then
  local adding = {}
  for i = 0, n - 1 do
    local tid = ARGV[12 + i * 4]
    adding[tid] = (adding[tid] or 0) + 1
  end
  for tid, k in pairs(adding) do
    -- Waiting = not started: in the tag's list, or queued to a worker bound to the tag (a
    -- bound worker's queue holds only that tag's jobs). Computed here, off the hot path.
    local waiting = rcall('LLEN', K_TAG .. tid)
    for _, w in ipairs(rcall('ZRANGE', K_BOUND .. tid, 0, -1)) do
      waiting = waiting + rcall('LLEN', K_WQ .. w)
    end
    if waiting + k > limit then return { ERR_TAG_FULL, tid } end
  end
end
local first = rcall('INCRBY', K_SEQ, n) - n + 1
local due = now + tonumber(ARGV[5])
if tonumber(ARGV[6]) > 0 then due = tonumber(ARGV[6]) end
local delayed = due > now
local status = 'pending'
if delayed then status = 'delayed' end
local fresh = {}
for i = 0, n - 1 do
  local b = 10 + i * 4
  local id = int(first + i)
  local tid = ARGV[b + 2]
  rcall('HSET', K_JOB .. id, 'type', ARGV[b], 'tag', ARGV[b + 1], 'tid', tid,
    'payload', ARGV[b + 3], 'status', status, 'attempts', 0, 'created', now,
    'max_attempts', ARGV[2], 'backoff', ARGV[3], 'timeout', ARGV[4])
  if delayed then
    rcall('HSET', K_JOB .. id, 'due', due)
    rcall('ZADD', K_DELAYED, due, id)
  elseif rcall('RPUSH', K_TAG .. tid, id) == 1 then
    fresh[tid] = true
  end
end
if dedupe ~= '' then rcall('SET', K_DEDUPE .. dedupe, int(first), 'PX', ARGV[8]) end
count(status, n)
-- Only a tag whose list was empty changes readiness: elsewhere the head is unchanged.
local cfg = load_config()
for tid in pairs(fresh) do refresh_tag(tid, cfg) end
if delayed then
  if rcall('LLEN', K_WAKE) == 0 then rcall('RPUSH', K_WAKE, '1') end  -- to re-plan its sleep
else
  wake_scheduler_if_work()
end
if not delayed then due = 0 end
return { first, now, 0, due }
