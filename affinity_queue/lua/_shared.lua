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

  Time is read from Redis (TIME) rather than passed in: leases are compared across hosts, and one
  clock is what makes that comparison sound.
]]
local rcall = redis.call
local ERR_LEASE_LOST = -1
local ERR_NOT_LEADER = -2
local ERR_NOT_ACTIVE = -3
local ERR_DATA_LOST = -4
local ERR_TAG_FULL = -5

local function now_ms()
  local t = rcall('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%d', n)
end

local function load_config()
  local c = rcall('HMGET', K_CONFIG, 'max_batch', 'concurrency')
  return { max_batch = tonumber(c[1]) or 10, limit = tonumber(c[2]) or 1 }
end

local function count(field, delta)
  if delta ~= 0 then rcall('HINCRBY', K_COUNTS, field, int(delta)) end
end

local function tag_limit(tid, cfg)
  return tonumber(rcall('HGET', K_LIMITS, tid)) or cfg.limit
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
-- The rank is the tag's head job id (oldest first), or its turn if later: a tag that gave up a
-- worker with work left queues behind the jobs that were waiting then, so tags take turns a
-- batch at a time and a flood on one tag cannot hold the others back.
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
  end
  local rank = head
  if into then rank = math.max(tonumber(head), tonumber(rcall('HGET', K_TURNS, tid)) or 0) end
  for _, set in ipairs({ K_READY_BOUND, K_READY_NEW }) do
    if set == into then rcall('ZADD', set, rank, tid) else rcall('ZREM', set, tid) end
  end
end

local function wake_scheduler_if_work()
  if rcall('ZCARD', K_READY_BOUND) > 0
      or (rcall('ZCARD', K_READY_NEW) > 0 and rcall('ZCARD', K_IDLE) > 0) then
    if rcall('LLEN', K_WAKE) == 0 then rcall('RPUSH', K_WAKE, '1') end
  end
end

-- Unbind a running worker from its tag and make it idle (its queue is empty).
local function release(w, cfg)
  local state = K_WS .. w
  local s = rcall('HMGET', state, 'status', 'tid')
  if s[1] ~= 'running' then return end
  rcall('ZREM', K_BOUND .. s[2], w)
  if rcall('EXISTS', K_TAG .. s[2]) == 1 then
    rcall('HSET', K_TURNS, s[2], tonumber(rcall('GET', K_SEQ)) + 0.5)
  end
  rcall('HSET', state, 'status', 'idle', 'tid', '', 'tag', '', 'batch', 0)
  if rcall('HGET', state, 'retiring') ~= '1' then rcall('ZADD', K_IDLE, now_ms(), w) end
  refresh_tag(s[2], cfg)
  wake_scheduler_if_work()
end

-- Put jobs back at the front of their tags, keeping the order of `ids`; status pending again.
-- Adds every tag touched to the set `tids`; returns how many jobs went back (an id whose job
-- record is gone is dropped).
local function requeue_front(ids, tids)
  local n = 0
  for i = #ids, 1, -1 do
    local job = K_JOB .. ids[i]
    local tid = rcall('HGET', job, 'tid')
    if tid then
      rcall('LPUSH', K_TAG .. tid, ids[i])
      rcall('HSET', job, 'status', 'pending', 'worker', '')
      tids[tid] = true
      n = n + 1
    end
  end
  return n
end

-- Put a worker's active job and queued jobs back at the front of their tags, in their original
-- order, and delete every trace of the worker. Used for graceful stops and for dead workers.
local function hand_back(w, cfg)
  local state = K_WS .. w
  local s = rcall('HMGET', state, 'active', 'tid')
  local ids = rcall('LRANGE', K_WQ .. w, 0, -1)
  local n_assigned = #ids
  local n_active = 0
  if s[1] and s[1] ~= '' then
    table.insert(ids, 1, s[1])
    n_active = 1
  end
  local tids = {}
  local n_back = requeue_front(ids, tids)
  if s[2] and s[2] ~= '' then
    rcall('ZREM', K_BOUND .. s[2], w)
    tids[s[2]] = true
  end
  rcall('HINCRBY', K_COUNTS, 'assigned', int(-n_assigned))
  rcall('HINCRBY', K_COUNTS, 'active', int(-n_active))
  rcall('HINCRBY', K_COUNTS, 'pending', n_back)
  rcall('DEL', state, K_WQ .. w, K_WAKEW .. w)
  rcall('ZREM', K_WORKERS, w)
  rcall('ZREM', K_IDLE, w)
  for tid in pairs(tids) do refresh_tag(tid, cfg) end
  wake_scheduler_if_work()
  return n_back
end

-- Record the end of a job: its status and outcome, the retention index it joins (trimmed to
-- the newest `keep`, each record expiring after `ttl_ms`), and a notification when somebody
-- waits for it. `field` is 'result' or 'error'.
local function finish(id, status, field, value, now)
  local job = K_JOB .. id
  rcall('HSET', job, 'status', status, 'finished', now, field, value)
  local index, keep, ttl = K_COMPLETED, 'keep_completed', 'completed_ttl'
  if status == 'failed' then index, keep, ttl = K_FAILED, 'keep_failed', 'failed_ttl' end
  local r = rcall('HMGET', K_CONFIG, keep, ttl)
  keep, ttl = tonumber(r[1]) or 100000, tonumber(r[2]) or 86400000
  rcall('PEXPIRE', job, ttl)
  rcall('ZADD', index, now, id)
  rcall('ZREMRANGEBYSCORE', index, '-inf', now - ttl)
  local excess = rcall('ZCARD', index) - keep
  if excess > 0 then
    local popped = rcall('ZPOPMIN', index, excess)
    for i = 1, #popped, 2 do  -- member, score, member, score ...
      -- A record somebody still waits for lives a few seconds past the wait, so wait_for can
      -- read it after its wake-up.
      local old = K_JOB .. popped[i]
      local watched = tonumber(rcall('HGET', old, 'notify')) or 0
      if popped[i] == id then
        -- the newest record itself (ties in finish time): its TTL trims it
      elseif watched < now then
        rcall('DEL', old)
      else
        rcall('PEXPIRE', old, watched - now + 5000)
      end
    end
  end
  count(status, 1)
  if (tonumber(rcall('HGET', job, 'notify')) or 0) >= now then rcall('PUBLISH', K_DONE, id) end
end

-- Append one failed attempt (a JSON object) to the job's history (a JSON array).
local function add_history(id, error_json)
  local job = K_JOB .. id
  local h = rcall('HGET', job, 'history')
  if not h or h == '' or h == '[]' then h = '[' .. error_json .. ']'
  else h = string.sub(h, 1, -2) .. ',' .. error_json .. ']' end
  rcall('HSET', job, 'history', h)
end

local function is_leader(fence)
  return rcall('HGET', K_LEADER, 'fence') == fence
end

-- ##### end of shared prelude #####
