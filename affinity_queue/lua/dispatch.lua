--[[
  dispatch: place pending jobs on workers, oldest ready tag first, on the leader's behalf.

  Atomic because choosing a worker, binding it to a tag, moving job ids from the tag to the worker
  and counting its batch are one decision: split up, two schedulers (or a scheduler and a worker
  releasing its tag) could bind one tag twice or lose a job between the lists.

  Cost per placed job is O(log tags): the next tag comes from the head of a ready set, never from
  a scan of the backlog; the budget bounds one call.

  The batch rule: a worker binds a tag for at most MAX_BATCH_SIZE of its jobs in a row, and a new
  binding to the tag it last released continues that count. A worker that has run a full batch
  of a tag in a row is given another tag whenever one is placeable (another idle worker takes the
  tag, or this worker takes the next ready tag); only when none is does it start a new batch.
  Idle workers whose lease expired are never bound: they wait for the reaper.

  Binding an idle worker starts its first run here (start_run, as advance would: the take and
  batch types its last advance left in its state), and its wake-up carries that run, so the
  worker starts without a call of advance. Lost in transit, the run is still the worker's active
  run: its next advance delivers it again (and drops the wake-up).

  Safe to repeat: fenced by the leader's number, and every step moves jobs forward from a state
  it reads; a repeat places what is left.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  fence: the caller's fencing number; the script does nothing unless it still leads
  ARGV[2]  budget: the most jobs to place in this call (and to move out of the delayed set)
  Before placing, due delayed jobs join their tags (relaxed retries at the front, delayed tasks
  at the end, each in the order they were added) and tags held by a strict retry whose delay has
  passed, or by a rate limit whose next token is due, are let go.

  Rate limits: a tag places only as many jobs as its token bucket holds; a tag whose bucket is
  empty is held until its next token is due (K_HELD), so it waits without blocking other tags
  and the scheduler wakes then (next due), without polling.

  Returns: {placed, more, next due} where more = 1 when the budget ran out with work left and
           next due is how many ms until the earliest delayed job or held tag is due (-1 = none);
           ERR_NOT_LEADER (-2) when the fence is stale.
]]
if not is_leader(ARGV[1]) then return ERR_NOT_LEADER end
local budget = tonumber(ARGV[2])
local cfg = load_config()
local now = now_ms()
local touched = {}
local fronts = {}  -- tag id -> relaxed retries that are due, to go back in front of the tag
for _, member in ipairs(rcall('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, budget)) do
  rcall('ZREM', K_DELAYED, member)
  local id = id_of_delayed(member)
  local f = rcall('HMGET', K_JOB .. id, 'tid', 'front')
  if f[1] then
    if f[2] == '1' then
      fronts[f[1]] = fronts[f[1]] or {}
      table.insert(fronts[f[1]], id)
    else
      rcall('RPUSH', K_TAG .. f[1], id)  -- members come in (due, order) order
    end
    rcall('HSET', K_JOB .. id, 'status', 'pending')
    count('delayed', -1)
    count('pending', 1)
    backlog(f[1], 1)
    touched[f[1]] = true
  end
end
for tid, ids in pairs(fronts) do
  table.sort(ids, function(a, b) return order_of(a) < order_of(b) end)
  for i = #ids, 1, -1 do rcall('LPUSH', K_TAG .. tid, ids[i]) end
end
for _, tid in ipairs(rcall('ZRANGEBYSCORE', K_HELD, '-inf', now, 'LIMIT', 0, budget)) do
  rcall('ZREM', K_HELD, tid)
  touched[tid] = true
end
for tid in pairs(touched) do refresh_tag(tid, cfg) end

local function next_due()
  local a = tonumber(rcall('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')[2] or -1)
  local b = tonumber(rcall('ZRANGE', K_HELD, 0, 0, 'WITHSCORES')[2] or -1)
  if a < 0 and b < 0 then return -1 end
  if a < 0 or (b >= 0 and b < a) then a = b end
  return math.max(0, a - now)
end

if rcall('HGET', K_CONFIG, 'paused') == '1' then return { 0, 0, next_due() } end

-- The longest-idle worker whose lease is still valid, and its score, or nil. Expired ones leave
-- the idle set (the reaper hands them back).
local function pop_live_idle()
  for _ = 1, 100 do
    local popped = rcall('ZPOPMIN', K_IDLE)
    if not popped[1] then return nil end
    if live_lease(popped[1], now) then return popped[1], popped[2] end
  end
  return nil
end

-- How many jobs of `tid` worker `w` ran in a row before it went idle.
local function streak_of(w, tid)
  local st = rcall('HMGET', K_WS .. w, 'last', 'streak')
  if st[1] == tid then return tonumber(st[2]) or 0 end
  return 0
end

-- The next ready tag that may bind a new worker, other than `tid`, or nil.
local function other_new_tag(tid)
  for _, t in ipairs(rcall('ZRANGE', K_READY_NEW, 0, 1)) do
    if t ~= tid then return t end
  end
  return nil
end

-- An idle worker to bind to `tid` under the batch rule: (worker, tag it binds, batch it starts
-- from), or nil when no live worker is idle.
local function worker_to_bind(tid)
  local w, score = pop_live_idle()
  if not w then return nil end
  local streak = streak_of(w, tid)
  if streak < cfg.max_batch then return w, tid, streak end
  local other = pop_live_idle()
  if other then
    rcall('ZADD', K_IDLE, score, w)
    streak = streak_of(other, tid)
    if streak >= cfg.max_batch then streak = 0 end
    return other, tid, streak
  end
  local alt = other_new_tag(tid)
  if alt then return w, alt, 0 end
  return w, tid, 0
end

local ghosts = rcall('SCARD', K_GHOSTS) > 0
-- Pops up to k job ids of a tag, leaving out ids cancelled while they waited deep in the list.
local function pop_jobs(tid, k)
  local ids = rcall('LPOP', K_TAG .. tid, k) or {}
  if not ghosts then return ids end
  local live = {}
  for _, id in ipairs(ids) do
    if rcall('SREM', K_GHOSTS, id) == 0 then live[#live + 1] = id end
  end
  return live
end

-- Rate limits (token buckets, IDENTIFY_TAG_RATE): how many jobs of `tid` may start now
-- (math.huge when the tag has no limit), the bucket's tokens, its size and rate per ms. A
-- bucket holds a second of tokens or a batch, whichever is more (room for the scheduler to be
-- late without losing tokens), and refills at the rate; a missing one is full (its key expires
-- once it would be).
local default_rate = tonumber(rcall('HGET', K_CONFIG, 'rate')) or 0
local function rate_room(tid)
  if not cfg.rated then return math.huge end
  local rate = tonumber(rcall('HGET', K_RATES, tid)) or default_rate
  if rate <= 0 then return math.huge end
  local size = math.max(cfg.max_batch, rate)
  local tokens = size
  local t, at = string.match(rcall('GET', K_BUCKET .. tid) or '', '^([^:]+):(%d+)$')
  if tonumber(t) then
    tokens = math.min(size, tonumber(t) + (now - tonumber(at)) * rate / 1000)
  end
  return math.floor(tokens + 1e-9), tokens, size, rate / 1000
end

-- Take `n` tokens of `tid`'s bucket; when less than one is left and the tag has work, hold the
-- tag (K_HELD, as a strict retry does) until the next token is due: it leaves the ready sets,
-- other tags go on, and the scheduler's wait ends then (next due).
local function spend(tid, n, tokens, size, per_ms)
  tokens = tokens - n
  rcall('SET', K_BUCKET .. tid, string.format('%.17g', tokens) .. ':' .. int(now),
    'PX', math.ceil((size - tokens) / per_ms) + 1)
  if tokens < 1 - 1e-9 and rcall('EXISTS', K_TAG .. tid) == 1 then
    rcall('ZADD', K_HELD, 'GT', now + math.ceil((1 - tokens) / per_ms), tid)
  end
end

local placed = 0
local more = 0
-- Each round places a job or takes a tag out of the ready sets (refresh_tag), so rounds are
-- bounded by budget + stale tags; the cap guards Redis against a rule that ever breaks that.
local rounds = 0
while true do
  rounds = rounds + 1
  if placed >= budget or rounds > 2 * budget then
    more = 1
    break
  end
  local rb = rcall('ZRANGE', K_READY_BOUND, 0, 0, 'WITHSCORES')
  local rn = {}
  if rcall('ZCARD', K_IDLE) > 0 then rn = rcall('ZRANGE', K_READY_NEW, 0, 0, 'WITHSCORES') end
  local tid
  if rb[1] and (not rn[1] or tonumber(rb[2]) <= tonumber(rn[2])) then
    tid = rb[1]
  elseif rn[1] then
    tid = rn[1]
  else
    break
  end
  -- The ready sets say which tag; the tag's own state says how (rule a before rule b).
  local w, batch = worker_with_room(tid, cfg)
  local bind = false
  local asked = tid
  if not w and rcall('ZCARD', K_BOUND .. tid) < tag_limit(tid, cfg) then
    w, tid, batch = worker_to_bind(tid)
    bind = w ~= nil
    if not bind then tid = asked end
  end
  if w then
    local room, tokens, size, per_ms = rate_room(tid)
    local ids = {}
    if room >= 1 then
      ids = pop_jobs(tid, math.min(cfg.max_batch - batch, budget - placed, 1000, room))
    end
    if room ~= math.huge then spend(tid, #ids, tokens, size, per_ms) end
    if #ids > 0 then
      if bind then
        local tag = rcall('HGET', K_JOB .. ids[1], 'tag')
        -- Its rank now: where the tag's turn starts from when this worker gives it up.
        local rank = rcall('ZSCORE', K_READY_NEW, tid) or ''
        -- A tag that may take another worker is charged its turn now instead of at release:
        -- its next worker comes after the tags waiting now (weighted: after its weight's share
        -- of them), so free workers go round the tags, not all to one tag.
        local limit = tag_limit(tid, cfg)
        local charged = limit > 1 and rcall('ZCARD', K_BOUND .. tid) + 1 < limit
          and rcall('EXISTS', K_TAG .. tid) == 1
        if charged then
          rcall('HSET', K_TURNS, tid, next_turn(tid, rcall('INCR', K_SEQ), tonumber(rank), cfg))
        end
        rcall('HSET', K_WS .. w, 'status', 'running', 'tid', tid, 'tag', tag, 'batch', batch,
          'rank', rank, 'charged', charged and '1' or '0')
        rcall('ZADD', K_BOUND .. tid, batch, w)
      end
      rcall('RPUSH', K_WQ .. w, unpack(ids))
      rcall('ZINCRBY', K_BOUND .. tid, #ids, w)
      rcall('HINCRBY', K_WS .. w, 'batch', #ids)
      rcall('HINCRBY', K_COUNTS, 'pending', -#ids)
      local assigned = #ids
      local started = {}  -- ids of the run started here for the worker just bound
      if bind then
        -- The worker waits for this wake-up; the run it would ask for comes with it (one call
        -- of advance fewer per binding). A worker that never said what it takes gets a bare
        -- wake-up and asks.
        local wake = '1'
        local t = rcall('HMGET', K_WS .. w, 'take', 'batches')
        if tonumber(t[1]) then
          local batches = (t[2] and t[2] ~= '') and cjson.decode(t[2]) or {}
          local rows, run, dropped = start_run(w, tid, tonumber(t[1]), batches, now)
          assigned = assigned - #run - dropped
          count('active', #run)
          if #run > 0 then wake = cjson.encode(rows) end
          for _, id in ipairs(run) do started[id] = true end
        end
        rcall('RPUSH', K_WAKEW .. w, wake)
      end
      -- The rest wait in the worker's queue (start_run marked the run's jobs active).
      for _, id in ipairs(ids) do
        if not started[id] then rcall('HSET', K_JOB .. id, 'status', 'assigned', 'worker', w) end
      end
      count('assigned', assigned)
      placed = placed + #ids
    elseif bind then
      rcall('ZADD', K_IDLE, now, w)
    end
  end
  refresh_tag(tid, cfg)
  if tid ~= asked then refresh_tag(asked, cfg) end
end
return { placed, more, next_due() }
