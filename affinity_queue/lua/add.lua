--[[
  add: accept tasks; each joins the end of its tag's pending list (or the delayed set).

  Atomic because the job record, its place in the tag's list, the counters and the tag's ready
  state must change together: a scheduler that ran in between would see a job it cannot place,
  or a tag that looks empty while it holds work. The deduplication check and the per-tag limit
  are part of the same step, so two producers cannot both pass them.

  An add that makes a tag ready (its list was empty) places what the scheduler's next dispatch
  would place (place_now: the oldest ready tags first, which may be older tags than its own,
  at most 100 jobs, when nothing else is due first): a task for an idle worker starts one hop
  after the add, with no scheduler wake-up and no dispatch call between. The scheduler is woken
  for what is left.

  Safe to repeat: the reply is kept under the call's request token, and a repeated call with the
  token returns it without writing (a retry after a lost reply adds nothing twice).

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  request token (random hex, one per call): also the suffix of the new jobs' ids
  ARGV[2]  n, the number of tasks (at most 1000 per call: the caller chunks)
  ARGV[3]  max attempts per task
  ARGV[4]  retry backoff base in ms
  ARGV[5]  timeout in ms (0 = none)
  ARGV[6]  delay in ms before the tasks are due (0 = due now)
  ARGV[7]  or the time they are due, in ms since the epoch (0 = use the delay); a time in the
           past means now
  ARGV[8]  deduplication key, hex-encoded ('' = none; only with n = 1)
  ARGV[9]  deduplication window in ms
  ARGV[10] most tasks of one tag that may wait to start (0 = no limit)
  ARGV[11] weight of the tasks' tags while these tasks lead them ('' = the leader's setting;
           see tag_weight)
  ARGV[12 + 4i..] for task i (0-based): type, identify_tag, tag id (hex), payload (JSON text)
  Returns: {order number of the first job (job i's id is "<first + i>-<token>"), Redis time in
           ms, 0, due time in ms (0 = due now)};
           {id of the existing job, time, 1, 0} when the deduplication key is still taken;
           {ERR_TAG_FULL (-5), tag id} when a tag would exceed its limit (nothing written).
]]
local token = ARGV[1]
local earlier = replay(token)
if earlier then return earlier end
local n = tonumber(ARGV[2])
local now = now_ms()
local dedupe = ARGV[8]
if dedupe ~= '' then
  local existing = rcall('GET', K_DEDUPE .. dedupe)
  -- A key that outlived its job's record (retention) admits the task again.
  if existing and rcall('EXISTS', K_JOB .. existing) == 1 then return { existing, now, 1, 0 } end
end
local limit = tonumber(ARGV[10])
if limit > 0 then
  local adding = {}
  for i = 0, n - 1 do
    local tid = ARGV[14 + i * 4]
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
local due = now + tonumber(ARGV[6])
if tonumber(ARGV[7]) > 0 then due = tonumber(ARGV[7]) end
local delayed = due > now
local status = 'pending'
if delayed then status = 'delayed' end
local now_s = int(now)  -- sent as text once (Redis formats a Lua number in every command)
local fresh = {}
local added = {}  -- tag id -> jobs due now (the tag index counts them)
for i = 0, n - 1 do
  local b = 12 + i * 4
  local id = int(first + i) .. '-' .. token
  local tid = ARGV[b + 2]
  rcall('HSET', K_JOB .. id, 'type', ARGV[b], 'tag', ARGV[b + 1], 'tid', tid,
    'payload', ARGV[b + 3], 'status', status, 'attempts', '0', 'created', now_s,
    'max_attempts', ARGV[3], 'backoff', ARGV[4], 'timeout', ARGV[5])
  if ARGV[11] ~= '' then rcall('HSET', K_JOB .. id, 'weight', ARGV[11]) end
  if delayed then
    rcall('HSET', K_JOB .. id, 'due', due)
    rcall('ZADD', K_DELAYED, due, delayed_member(id))
  else
    if rcall('RPUSH', K_TAG .. tid, id) == 1 then fresh[tid] = true end
    added[tid] = (added[tid] or 0) + 1
  end
end
for tid, k in pairs(added) do backlog(tid, k) end
if dedupe ~= '' then rcall('SET', K_DEDUPE .. dedupe, int(first) .. '-' .. token, 'PX', ARGV[9]) end
count(status, n)
if delayed then
  wake_scheduler()  -- to re-plan its sleep
elseif next(fresh) then
  -- Only a tag whose list was empty changes readiness: elsewhere the head is unchanged (and
  -- the scheduling settings, read for that alone, are not needed), and nothing new is placeable.
  local cfg = load_config()
  for tid in pairs(fresh) do refresh_tag(tid, cfg) end
  place_now(cfg, now)
  due = 0
else
  wake_scheduler_if_work()
  due = 0
end
return remember(token, { first, now, 0, due })
