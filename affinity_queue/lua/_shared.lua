--[[
  Shared prelude: the loader prepends this file to every script, so the rules that several
  operations apply (when a tag is ready, how a worker gives back its jobs) exist once.

  KEYS (the same three for every script, built by affinity_queue/keys.py QueueKeys.script_keys):
    KEYS[1]  the queue's prefix "{name}:"
    KEYS[2]  the worker queue prefix "<WORKER_QUEUE_PREFIX>:{name}:"
    KEYS[3]  the worker state prefix "<WORKER_STATE_PREFIX>:{name}:"
  The loader prepends the K_* locals that name every key from these (keys.py lua_key_names,
  which also says what each key holds); scripts use those names, never KEYS[i].

  In the counts hash, pending delayed assigned active are current numbers; completed failed
  cancelled count outcomes since the queue began.

  Job ids are "<order>-<request token>": the order number comes from the seq counter and ranks
  jobs and turns (no two share one), the token of the call that added the job makes the id name
  one job for ever, across queues and across a counter that Redis lost or rolled back.

  Rules every script keeps:
  - It validates and sizes everything before its first write, so it cannot fail halfway (Redis
    keeps what a failing script wrote). Redis refuses a script that would write while out of
    memory at its first write, so OOM never splits one either.
  - Its work per call is bounded whatever the data size: long jobs go in slices (TRIM_SLICE,
    callers' budgets).
  - It is safe to run twice with the same arguments (a client retry after a lost reply); each
    header says why ("Safe to repeat").

  Time is read from Redis (TIME) rather than passed in: leases are compared across hosts, and one
  clock is what makes that comparison sound.
]]
local rcall = redis.call
local ERR_LEASE_LOST = -1
local ERR_NOT_LEADER = -2
local ERR_NOT_ACTIVE = -3
local ERR_DATA_LOST = -4
local ERR_TAG_FULL = -5
local ERR_LAYOUT = -6
local ERR_NEED_LIMITS = -7
local REQUEST_TTL_MS = 120000  -- how long a request token's reply is kept for a retry
local TRIM_SLICE = 20  -- most retention entries one finished job removes (per rule: age, count)
local PLACE_BUDGET = 100  -- most jobs add or advance place at once (the scheduler's budget)
local TAG_DONE_KEEP = 20  -- finished job ids kept per tag for its page (K_TAG_DONE)
local NAMED_IDS = 10  -- job ids a recovery names in its reply (for its log line)

local function now_ms()
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%d', n)
end

-- The order number of a job id ("<order>-<token>", or a bare number from before tokens).
local function order_of(id)
  return tonumber(string.match(id, '^%d+'))
end

-- Delayed-set members sort by their bytes among equal due times, so they carry the order
-- number zero-padded: due together means in the order they were added.
local function delayed_member(id)
  return string.format('%015d', order_of(id)) .. string.sub(id, #string.match(id, '^%d+') + 1)
end

local function id_of_delayed(member)
  return (string.gsub(member, '^0+', ''))
end

local function load_config()
  local c = rcall('HMGET', K_CONFIG, 'max_batch', 'concurrency', 'weight', 'rated', 'paused',
    'wq_prefix', 'ws_prefix')
  return { max_batch = tonumber(c[1]) or 10, limit = tonumber(c[2]) or 1,
    weight = tonumber(c[3]) or 1, rated = c[4] == '1', written = c[1] ~= false,
    paused = c[5] == '1', wq_prefix = c[6], ws_prefix = c[7] }
end

local function count(field, delta)
  if delta ~= 0 then rcall('HINCRBY', K_COUNTS, field, int(delta)) end
end

-- The tag index (keys.py, TAG INDEX): `delta` jobs of `tid` began (> 0) or stopped (< 0) waiting
-- to start. A tag leaves both sets at zero, so they hold exactly the tags with work.
local function backlog(tid, delta)
  if delta == 0 or not tid or tid == '' then return end
  local n = tonumber(rcall('ZINCRBY', K_BACKLOG, int(delta), tid))
  if n <= 0 then
    rcall('ZREM', K_BACKLOG, tid)
    rcall('ZREM', K_TAG_NAMES, tid)
  elseif n == delta then
    rcall('ZADD', K_TAG_NAMES, 0, tid)
  end
end

local function hex(s)
  return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

local function unhex(h)
  return (string.gsub(h, '%x%x', function(c) return string.char(tonumber(c, 16)) end))
end

-- The dead-letter indexes (K_FAILED_BY) a job with these record fields belongs to.
local function failed_by_keys(kind, tid, error_json)
  local out = {}
  if kind then out[#out + 1] = K_FAILED_BY .. 'type:' .. hex(kind) end
  if tid then out[#out + 1] = K_FAILED_BY .. 'tag:' .. tid end
  local ok, e = pcall(cjson.decode, error_json or '')
  if ok and type(e) == 'table' and type(e.type) == 'string' then
    out[#out + 1] = K_FAILED_BY .. 'error:' .. hex(e.type)
  end
  return out
end

-- Take a dead letter out of its K_FAILED_BY indexes (before its record changes or goes).
local function unindex_failed(id)
  local f = rcall('HMGET', K_JOB .. id, 'type', 'tid', 'error')
  for _, key in ipairs(failed_by_keys(f[1], f[2], f[3])) do rcall('ZREM', key, id) end
end

local function tag_limit(tid, cfg)
  return tonumber(rcall('HGET', K_LIMITS, tid)) or cfg.limit
end

-- A tag's weight: that of its head job (given to add), else the leader's for the tag.
local function tag_weight(tid, head, cfg)
  return tonumber(rcall('HGET', K_JOB .. head, 'weight'))
    or tonumber(rcall('HGET', K_WEIGHTS, tid)) or cfg.weight
end

-- The turn of a tag that gave up a worker with work left; `start` is the tag's rank when that
-- worker was bound. Weight 1 (the default): `fresh`, a new order number, so the tag queues
-- behind every job waiting now: the back of the line. Weight w: weighted fair queuing in
-- order-number time, the turn advances from `start` by the gap to `fresh` divided by w, so among
-- tags that all have work one of weight 3 comes back three times as often as one of weight 1
-- (and one of weight 1/2 queues behind jobs added after it gave up its worker); a tag's turns
-- only grow. A tag's first turn takes a gap of at most the line's length (one order number per
-- ready tag): from a backlog's first job the gap is the backlog's age, not a round of the line.
-- Weighted turns are kept off whole numbers (job orders and plain turns) and unique among
-- themselves (K_VTURNS): a turn another tag holds already becomes the midpoint to the next one
-- held, so a tie goes in release order.
local function next_turn(tid, fresh, start, cfg)
  local head = rcall('LINDEX', K_TAG .. tid, 0)
  local old = tonumber(rcall('HGET', K_TURNS, tid))
  if old and old ~= math.floor(old) then rcall('ZREM', K_VTURNS, tid) end
  local weight = tag_weight(tid, head, cfg)
  if weight == 1 then return fresh end
  local turn
  if old then
    start = start or math.max(order_of(head), old)
    turn = math.max(old, start + (fresh - start) / weight)
  else
    local line = rcall('ZCARD', K_READY_BOUND) + rcall('ZCARD', K_READY_NEW) + 1
    local gap = math.min(fresh - (start or order_of(head)), line)
    turn = fresh - gap + gap / weight
  end
  local whole = math.floor(turn)
  if turn == whole then turn = whole + 0.5 end
  local near = rcall('ZRANGEBYSCORE', K_VTURNS, turn, '(' .. int(whole + 1), 'WITHSCORES',
    'LIMIT', 0, 2)
  if near[1] and tonumber(near[2]) == turn then
    local after = tonumber(near[4]) or (whole + 1)
    turn = turn + (after - turn) / 2
    if turn <= tonumber(near[2]) or turn >= after then return fresh end  -- no double between
  end
  rcall('ZADD', K_VTURNS, turn, tid)
  return turn
end

-- The reply a call with this request token already got, if it ran (see remember).
local function replay(token)
  if token == '' then return nil end
  local r = rcall('GET', K_REQ .. token)
  if r then return cjson.decode(r) end
  return nil
end

-- Keep `reply` under the call's token for REQUEST_TTL_MS: a retry of the call after a lost reply
-- gets it again instead of applying the call a second time.
local function remember(token, reply)
  if token ~= '' then rcall('SET', K_REQ .. token, cjson.encode(reply), 'PX', REQUEST_TTL_MS) end
  return reply
end

-- The worker's lease expiry if it is still valid, else nil: an expired lease works nowhere,
-- reaped or not, so a worker the leader may be recovering cannot start or renew anything.
local function live_lease(w, now)
  local expiry = tonumber(rcall('ZSCORE', K_WORKERS, w))
  if expiry and expiry >= now then return expiry end
  return nil
end

-- The queue's worker key layout is fixed while it has members: a process whose worker prefixes
-- differ would write worker queues nobody reads. Returns the layout in use when this caller's
-- differs, else nil (and records the caller's layout when the queue has nobody).
local function check_layout()
  local c = rcall('HMGET', K_CONFIG, 'wq_prefix', 'ws_prefix')
  if c[1] == K_WQ and c[2] == K_WS then return nil end
  if c[1] and (rcall('EXISTS', K_LEADER) == 1 or rcall('ZCARD', K_WORKERS) > 0) then
    return { c[1], c[2] }
  end
  rcall('HSET', K_CONFIG, 'wq_prefix', K_WQ, 'ws_prefix', K_WS)
  return nil
end

-- The bound worker of `tid` with the smallest batch, if it has room: (worker, batch) or nil.
local function worker_with_room(tid, cfg)
  local least = rcall('ZRANGE', K_BOUND .. tid, 0, 0, 'WITHSCORES')
  if least[1] and tonumber(least[2]) < cfg.max_batch then
    return least[1], tonumber(least[2])
  end
  return nil
end

-- File the tag under the ready set that matches its state (or none). Every change to a tag's
-- pending list or bound workers ends with this call; dispatch relies on it to never scan.
-- The rank is the order number of the tag's head job, or its turn if later: a tag that gave up
-- a worker with work left queues behind the jobs that were waiting then, so tags take turns a
-- batch at a time and a flood on one tag cannot hold the others back. Ranks come from one
-- counter, so no two tags ever tie.
local function refresh_tag(tid, cfg)
  local head = rcall('LINDEX', K_TAG .. tid, 0)
  local into = nil
  if head and not rcall('ZSCORE', K_HELD, tid) and rcall('SISMEMBER', K_PAUSED_TAGS, tid) == 0 then
    if worker_with_room(tid, cfg) then
      into = K_READY_BOUND
    elseif rcall('ZCARD', K_BOUND .. tid) < tag_limit(tid, cfg) then
      into = K_READY_NEW
    end
  elseif not head then
    rcall('HDEL', K_TURNS, tid)
    rcall('ZREM', K_VTURNS, tid)
  end
  local rank = nil
  if into then rank = math.max(order_of(head), tonumber(rcall('HGET', K_TURNS, tid)) or 0) end
  for _, set in ipairs({ K_READY_BOUND, K_READY_NEW }) do
    if set == into then rcall('ZADD', set, rank, tid) else rcall('ZREM', set, tid) end
  end
end

local function wake_scheduler()
  if rcall('LLEN', K_WAKE) == 0 then rcall('RPUSH', K_WAKE, '1') end
end

-- Whether placing has work: a tag ready for a new worker while one is idle, or a tag ready for
-- a bound worker with room. The idle set first: with no idle worker (a busy fleet, producers
-- alone) no new tag can be placed, and the ready-new count is not read.
local function placement_work()
  return (rcall('ZCARD', K_IDLE) > 0 and rcall('ZCARD', K_READY_NEW) > 0)
    or rcall('ZCARD', K_READY_BOUND) > 0
end

local function wake_scheduler_if_work()
  if placement_work() then wake_scheduler() end
end

-- Unbind a running worker from its tag and make it idle (its queue is empty). It remembers the
-- tag and its batch: a new binding to the same tag continues that count (see dispatch). The tag
-- takes its next turn now, unless dispatch charged it when it bound the worker. The caller
-- places or wakes the scheduler.
local function release(w, cfg, now)
  local state = K_WS .. w
  local s = rcall('HMGET', state, 'status', 'tid', 'batch', 'rank', 'retiring', 'charged')
  if s[1] ~= 'running' then return end
  rcall('ZREM', K_BOUND .. s[2], w)
  if s[6] ~= '1' and rcall('EXISTS', K_TAG .. s[2]) == 1 then
    rcall('HSET', K_TURNS, s[2], next_turn(s[2], rcall('INCR', K_SEQ), tonumber(s[4]), cfg))
  end
  rcall('HSET', state, 'status', 'idle', 'tid', '', 'tag', '', 'batch', 0, 'last', s[2],
    'streak', s[3])
  if s[5] ~= '1' then rcall('ZADD', K_IDLE, now, w) end
  refresh_tag(s[2], cfg)
end

-- Record the end of jobs: each one's status and outcome, the retention index it joins (trimmed
-- to the newest `keep` and to `ttl_ms`, TRIM_SLICE entries per job recorded and rule; each
-- record expires after `ttl_ms` by itself), its tag's list of finished jobs, and a notification
-- when somebody waits for it. `ends` lists {id, status, field, value, started, ended, tid}:
-- `field` is 'result' or 'error'; `started` and `ended` (optional) say when the job really ran,
-- else it ended `now`; `tid` (optional) is the job's tag id when the caller knows it. Retention
-- ranks records by `now`, when they were recorded. A dead letter also joins its K_FAILED_BY
-- indexes, which age out like the dead-letter set (and expire whole when no failure joins
-- them). The writes shared by the jobs (index, tag list, counts, trimming) are one command each
-- per call, not per job.
local function finish_run(ends, now)
  local c = rcall('HMGET', K_CONFIG, 'keep_completed', 'completed_ttl', 'keep_failed',
    'failed_ttl', 'notify')
  local rules = {
    { index = K_COMPLETED, keep = tonumber(c[1]) or 100000, ttl = tonumber(c[2]) or 86400000 },
    { index = K_FAILED, keep = tonumber(c[3]) or 100000, ttl = tonumber(c[4]) or 86400000 },
  }
  -- Numbers sent as text once: Redis formats a Lua number argument anew in every command.
  local now_s = int(now)
  for _, rule in ipairs(rules) do rule.ttl_s = int(rule.ttl) end
  local statuses, counted = {}, {}
  local tids, done_ids, done_ttl = {}, {}, {}
  -- Past the end of the last watch (watch.lua) no job's notify field can be due, so a completed
  -- job of a known tag needs no read.
  local watched = (tonumber(c[5]) or 0) >= now
  for _, e in ipairs(ends) do
    local id, status, value = e[1], e[2], e[4]
    local rule = rules[status == 'failed' and 2 or 1]
    local job = K_JOB .. id
    if e[5] then
      rcall('HSET', job, 'status', status, 'started', e[5], 'finished', e[6], e[3], value)
    else
      rcall('HSET', job, 'status', status, 'finished', now_s, e[3], value)
    end
    rcall('PEXPIRE', job, rule.ttl_s)
    rule[#rule + 1] = id
    if not counted[status] then statuses[#statuses + 1] = status end
    counted[status] = (counted[status] or 0) + 1
    local f = { e[7] }
    if watched or not e[7] or status == 'failed' then
      f = rcall('HMGET', job, 'tid', 'type', 'notify')
    end
    if f[1] then
      if not done_ids[f[1]] then
        tids[#tids + 1], done_ids[f[1]], done_ttl[f[1]] = f[1], {}, rule.ttl
      end
      table.insert(done_ids[f[1]], id)
    end
    if status == 'failed' then
      for _, key in ipairs(failed_by_keys(f[2], f[1], value)) do
        rcall('ZADD', key, now, id)
        local old = rcall('ZRANGEBYSCORE', key, '-inf', now - rule.ttl, 'LIMIT', 0, TRIM_SLICE)
        if #old > 0 then rcall('ZREM', key, unpack(old)) end
        rcall('PEXPIRE', key, rule.ttl)
      end
    end
    if (tonumber(f[3]) or 0) >= now then rcall('PUBLISH', K_DONE, id) end
  end
  for _, tid in ipairs(tids) do
    -- Trimmed to TAG_DONE_KEEP once it holds twice that, and expiring `ttl` after it began
    -- (like the records it names).
    local done, ids = K_TAG_DONE .. tid, done_ids[tid]
    local n = rcall('LPUSH', done, unpack(ids))
    if n == #ids then rcall('PEXPIRE', done, done_ttl[tid]) end
    if n > 2 * TAG_DONE_KEEP then rcall('LTRIM', done, 0, TAG_DONE_KEEP - 1) end
  end
  for _, rule in ipairs(rules) do
    if #rule > 0 then
      local index, slice, scored = rule.index, TRIM_SLICE * #rule, {}
      -- The call's ends in their order, within its millisecond: a tie would be broken by the
      -- ids as text ("100-..." before "95-..."), and the trim below would keep older records.
      for i, id in ipairs(rule) do
        scored[2 * i - 1] = i == 1 and now_s or string.format('%.4f', now + (i - 1) / #rule)
        scored[2 * i] = id
      end
      rcall('ZADD', index, unpack(scored))
      local expired = rcall('ZRANGEBYSCORE', index, '-inf', now - rule.ttl, 'LIMIT', 0, slice)
      if #expired > 0 then
        if index == K_FAILED then
          for _, old in ipairs(expired) do unindex_failed(old) end
        end
        rcall('ZREM', index, unpack(expired))
      end
      local excess = math.min(rcall('ZCARD', index) - rule.keep, slice)
      if excess > 0 then
        local popped = rcall('ZPOPMIN', index, excess)
        for i = 1, #popped, 2 do  -- member, score, member, score ...
          if index == K_FAILED then unindex_failed(popped[i]) end
          -- A record somebody still waits for lives a few seconds past the wait, so wait_for
          -- can read it after its wake-up.
          -- The record may be of this call itself (a run of more than `keep` jobs, or ties in
          -- finish time): past `keep` all the same.
          local old = K_JOB .. popped[i]
          local watched = tonumber(rcall('HGET', old, 'notify')) or 0
          if watched < now then
            rcall('DEL', old)
          else
            rcall('PEXPIRE', old, watched - now + 5000)
          end
        end
      end
    end
  end
  for _, status in ipairs(statuses) do count(status, counted[status]) end
end

local function finish(id, status, field, value, now)
  finish_run({ { id, status, field, value } }, now)
end

-- Append one failed attempt (a JSON object) to the job's history (a JSON array).
local function add_history(id, error_json)
  local job = K_JOB .. id
  local h = rcall('HGET', job, 'history')
  if not h or h == '' or h == '[]' then h = '[' .. error_json .. ']'
  else h = string.sub(h, 1, -2) .. ',' .. error_json .. ']' end
  rcall('HSET', job, 'history', h)
end

-- The ids of a worker's active run, in order: its state's `active` field lists them,
-- space-separated ('' or nil when it runs nothing).
local function active_ids(field)
  local ids = {}
  for id in string.gmatch(field or '', '%S+') do ids[#ids + 1] = id end
  return ids
end

-- The job fields a run's reply row is made of, in HMGET order (see run_row).
local RUN_FIELDS = { 'type', 'tag', 'payload', 'attempts', 'max_attempts', 'backoff', 'timeout',
  'created', 'due', 'started', 'tid' }

-- Append a started job's reply row to `out`: its id, the first seven RUN_FIELDS `f`, and how
-- long it waited (its start, `started`, less the later of its add and its due time).
local function run_row(out, id, f, started)
  local from = math.max(tonumber(f[8]) or 0, tonumber(f[9]) or 0)
  out[#out + 1] = id
  for k = 1, 7 do out[#out + 1] = f[k] or false end  -- a missing field is a nil, not a hole
  out[#out + 1] = math.max(0, (tonumber(started) or from) - from)
end

-- Start worker `w`'s next run from the front of its queue, which holds jobs of its bound tag
-- `tid`: up to `take` jobs, or, when the head is of a batch type (`batch_max`: type -> most
-- jobs), up to that many of that type; a run of per-task jobs stops before a batch type, and the
-- jobs that do not belong go back to the front in order. A queued id whose record is gone
-- (deleted by hand, evicted under an allkeys policy) has nothing to run: it leaves the run, and
-- its tag's backlog with it. The run becomes the worker's active run.
-- Returns its reply rows (run_row, flattened), the ids that started and how many ids were
-- dropped; the caller moves started + dropped out of 'assigned' and started into 'active'.
local function start_run(w, tid, take, batch_max, now)
  local queue = K_WQ .. w
  local batched = next(batch_max) ~= nil
  local ids, rows, dropped = {}, {}, 0
  local function keep(popped)
    for _, id in ipairs(popped) do
      local f = rcall('HMGET', K_JOB .. id, unpack(RUN_FIELDS))
      if f[1] then
        ids[#ids + 1] = id
        rows[#rows + 1] = f
      else
        dropped = dropped + 1
        backlog(tid, -1)
      end
    end
  end
  -- Without batch types the run is the first `take` jobs: one pop. With them, the head's type
  -- says how many to take.
  repeat  -- each pass pops at least one id, so the queue bounds the passes
    local popped = rcall('LPOP', queue, batched and 1 or take)
    if popped then keep(popped) end
  until rows[1] or not popped
  if not rows[1] then return {}, {}, dropped end
  local head = rows[1]
  local most = batch_max[head[1]] or take
  if batched and most > 1 then keep(rcall('LPOP', queue, most - 1) or {}) end
  local n = #ids
  for i = 2, #ids do
    local t = rows[i][1]
    if (batch_max[head[1]] and t ~= head[1]) or (not batch_max[head[1]] and batch_max[t]) then
      n = i - 1
      break
    end
  end
  for i = #ids, n + 1, -1 do
    rcall('LPUSH', queue, ids[i])
    ids[i] = nil
  end
  local out = {}
  local waiting = {}  -- tag id -> jobs of it that start now (they stop waiting: TAG INDEX)
  local now_s = int(now)  -- sent as text once (Redis formats a Lua number in every command)
  for i, taken in ipairs(ids) do
    local f = rows[i]
    f[4] = (tonumber(f[4]) or 0) + 1
    rcall('HSET', K_JOB .. taken, 'status', 'active', 'started', now_s, 'worker', w,
      'attempts', f[4])
    if f[11] then waiting[f[11]] = (waiting[f[11]] or 0) + 1 end
    run_row(out, taken, f, now)
  end
  for t, k in pairs(waiting) do backlog(t, -k) end
  rcall('HSET', K_WS .. w, 'active', table.concat(ids, ' '))
  return out, ids, dropped
end

-- Put jobs back at the front of their tags, keeping the order of `ids`; status pending again.
-- Adds every tag touched to the set `tids`; returns how many jobs went back (an id whose job
-- record is gone is dropped). A job whose cancellation was requested while it ran ends
-- cancelled instead: it must not run again. `queued_tid` is the tag of the worker whose queue
-- held the ids (they count in its backlog already), or nil for a job that had started.
local function requeue_front(ids, tids, now, queued_tid)
  local n = 0
  for i = #ids, 1, -1 do
    local job = K_JOB .. ids[i]
    local f = rcall('HMGET', job, 'tid', 'cancel')
    if f[2] == '1' then
      finish(ids[i], 'cancelled', 'error',
        '{"type":"Cancelled","message":"cancelled while it ran; its worker stopped"}', now)
    elseif f[1] then
      rcall('LPUSH', K_TAG .. f[1], ids[i])
      rcall('HSET', job, 'status', 'pending', 'worker', '')
      tids[f[1]] = true
      n = n + 1
    end
    if queued_tid and not f[1] then
      backlog(queued_tid, -1)
    elseif queued_tid and f[2] == '1' then
      backlog(f[1], -1)
    elseif not queued_tid and f[1] and f[2] ~= '1' then
      backlog(f[1], 1)
    end
  end
  return n
end

-- Move the last `budget` (>= 1) jobs queued to worker `w` back to the front of their tag; the
-- worker takes nothing new meanwhile (its batch is marked full, it leaves the idle set).
-- Returns the number of jobs moved, whether its queue is now empty, and their ids.
local function unqueue(w, cfg, budget, tids, now)
  local state = K_WS .. w
  rcall('HSET', state, 'retiring', '1')
  rcall('ZREM', K_IDLE, w)
  local tid = rcall('HGET', state, 'tid')
  if tid and tid ~= '' and rcall('ZSCORE', K_BOUND .. tid, w) then
    rcall('ZADD', K_BOUND .. tid, cfg.max_batch, w)
    tids[tid] = true
  end
  local slice = rcall('LRANGE', K_WQ .. w, -budget, -1)
  rcall('LTRIM', K_WQ .. w, 0, -#slice - 1)
  count('assigned', -#slice)
  count('pending', requeue_front(slice, tids, now, tid or ''))
  return #slice, rcall('EXISTS', K_WQ .. w) == 0, slice
end

-- Give back up to `budget` (>= 1) of a worker's jobs to the front of their tags, in their
-- original order (its queued jobs from the tail, its active run last, so it lands in front), and
-- once all are back delete every trace of the worker. Used for graceful stops and for dead
-- workers; a worker with a long queue takes several calls, and stays unplaceable in between.
-- `unstarted`: the caller knows that no job of the active run has started (a stopping process
-- whose worker was idle: a run dispatch sent it with a wake-up it never acted on): those jobs
-- go back with their attempt taken back, as advance sends back jobs it did not run.
-- Returns the number of jobs handled, whether the worker is gone, and the ids of the first
-- NAMED_IDS of them (its active run first).
local function hand_back(w, cfg, budget, unstarted)
  local now = now_ms()
  local tids = {}
  local n, empty, slice = unqueue(w, cfg, budget, tids, now)
  local named = {}
  local gone = false
  if empty and n < budget then
    local state = K_WS .. w
    local s = rcall('HMGET', state, 'active', 'tid')
    local active = active_ids(s[1])
    if #active > 0 then
      count('active', -#active)
      if unstarted then
        for _, id in ipairs(active) do
          local job = K_JOB .. id
          local a = tonumber(rcall('HGET', job, 'attempts'))
          if a and a > 0 then rcall('HSET', job, 'attempts', int(a - 1)) end
          rcall('HDEL', job, 'started')
        end
      end
      count('pending', requeue_front(active, tids, now, nil))
      n = n + #active
      for i = 1, math.min(#active, NAMED_IDS) do named[i] = active[i] end
    end
    if s[2] and s[2] ~= '' then rcall('ZREM', K_BOUND .. s[2], w) end
    rcall('DEL', state, K_WQ .. w, K_WAKEW .. w)
    rcall('ZREM', K_WORKERS, w)
    gone = true
  end
  for tid in pairs(tids) do refresh_tag(tid, cfg) end
  wake_scheduler_if_work()
  for i = 1, math.min(#slice, NAMED_IDS - #named) do named[#named + 1] = slice[i] end
  return n, gone, named
end

-- Whether a script other than dispatch may place now what dispatch would (place): the queue is
-- not paused, a leader's term has written its settings (the batch size), the caller's worker
-- keys are the queue's (a producer started with other prefixes must not bind workers under
-- keys nobody reads), and no delayed job or held tag is due (dispatch lets those in first;
-- placing before them could start a tag's later task before an earlier one).
local function placeable(cfg, now)
  if cfg.paused or not cfg.written or cfg.wq_prefix ~= K_WQ or cfg.ws_prefix ~= K_WS then
    return false
  end
  for _, set in ipairs({ K_DELAYED, K_HELD }) do
    local first = rcall('ZRANGE', set, 0, 0, 'WITHSCORES')
    if first[2] and tonumber(first[2]) <= now then return false end
  end
  return true
end

-- Place ready jobs on workers, oldest ready tag first, up to `budget` jobs: the decision
-- dispatch makes (the rules are in its header), also taken by add and advance (place_now).
-- Returns placed, more (1 when the budget ran out with work left), whether a rate limit held a
-- tag, and the rows of the run started for worker `own` when it was bound (the caller's own
-- worker: its run is the caller's reply instead of a wake-up), else nil.
local function place(budget, cfg, now, own)
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
  local default_rate = cfg.rated and tonumber(rcall('HGET', K_CONFIG, 'rate')) or 0
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
  local held = false  -- whether a rate limit held a tag
  local function spend(tid, n, tokens, size, per_ms)
    tokens = tokens - n
    rcall('SET', K_BUCKET .. tid, string.format('%.17g', tokens) .. ':' .. int(now),
      'PX', math.ceil((size - tokens) / per_ms) + 1)
    if tokens < 1 - 1e-9 and rcall('EXISTS', K_TAG .. tid) == 1 then
      rcall('ZADD', K_HELD, 'GT', now + math.ceil((1 - tokens) / per_ms), tid)
      held = true
    end
  end

  local placed = 0
  local more = 0
  local own_rows = nil
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
          -- (A head whose record is gone, which start_run drops, still names its tag.)
          local tag = rcall('HGET', K_JOB .. ids[1], 'tag') or unhex(tid)
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
          -- The batch taken so far, these jobs included (the worker's count and its score).
          rcall('HSET', K_WS .. w, 'status', 'running', 'tid', tid, 'tag', tag,
            'batch', batch + #ids, 'rank', rank, 'charged', charged and '1' or '0')
          rcall('ZADD', K_BOUND .. tid, batch + #ids, w)
        else
          rcall('ZINCRBY', K_BOUND .. tid, #ids, w)
          rcall('HINCRBY', K_WS .. w, 'batch', #ids)
        end
        rcall('RPUSH', K_WQ .. w, unpack(ids))
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
            if #run > 0 and w == own then
              own_rows, wake = rows, nil
            elseif #run > 0 then
              wake = cjson.encode(rows)
            end
            for _, id in ipairs(run) do started[id] = true end
          end
          if wake then rcall('RPUSH', K_WAKEW .. w, wake) end
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
  return placed, more, held, own_rows
end

-- What the next dispatch would place, placed by another script (add, advance) while nothing
-- else is due first (placeable), at most PLACE_BUDGET jobs. The scheduler is woken for what is
-- left, and when a rate limit held a tag (its wait must end when the tag's next token is due).
-- Returns the rows of the run started for worker `own` (optional) when it was bound, else nil.
local function place_now(cfg, now, own)
  if not placement_work() then return nil end  -- nothing to place, nor to wake the scheduler for
  local held, rows = false, nil
  if placeable(cfg, now) then
    local _, more, h, r = place(PLACE_BUDGET, cfg, now, own)
    -- Within its budget, place stops only once nothing is left to place (placement_work).
    if more == 0 and not h then return r end
    held, rows = h, r
  end
  if held then wake_scheduler() else wake_scheduler_if_work() end
  return rows
end

local function is_leader(fence)
  return rcall('HGET', K_LEADER, 'fence') == fence
end

-- ##### end of shared prelude #####
