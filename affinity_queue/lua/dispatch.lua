--[[
  dispatch: place pending jobs on workers, oldest ready tag first, on the leader's behalf.

  Atomic because choosing a worker, binding it to a tag, moving job ids from the tag to the worker
  and counting its batch are one decision: split up, two schedulers (or a scheduler and a worker
  releasing its tag) could bind one tag twice or lose a job between the lists.

  Cost per placed job is O(log tags): the next tag comes from the head of a ready set, never from
  a scan of the backlog.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  fence: the caller's fencing number; the script does nothing unless it still leads
  ARGV[2]  budget: the most jobs to place in this call
  Before placing, due delayed jobs join their tags (a relaxed retry at the front, a delayed task
  at the end) and tags held by a strict retry whose delay has passed are let go.

  Returns: {placed, more, next due} where more = 1 when the budget ran out with work left and
           next due is how many ms until the earliest delayed job or held tag is due (-1 = none);
           ERR_NOT_LEADER (-2) when the fence is stale.
]]
if not is_leader(ARGV[1]) then return ERR_NOT_LEADER end
local budget = tonumber(ARGV[2])
local cfg = load_config()
local now = now_ms()
local touched = {}
local due = rcall('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, budget)
for _, id in ipairs(due) do
  rcall('ZREM', K_DELAYED, id)
  local f = rcall('HMGET', K_JOB .. id, 'tid', 'front')
  if f[1] then
    if f[2] == '1' then rcall('LPUSH', K_TAG .. f[1], id) else rcall('RPUSH', K_TAG .. f[1], id) end
    rcall('HSET', K_JOB .. id, 'status', 'pending')
    count('delayed', -1)
    count('pending', 1)
    touched[f[1]] = true
  end
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
  if not w and rcall('ZCARD', K_BOUND .. tid) < tag_limit(tid, cfg) then
    local popped = rcall('ZPOPMIN', K_IDLE)
    if popped[1] then
      w, batch, bind = popped[1], 0, true
    end
  end
  if w then
    local ids = rcall('LPOP', K_TAG .. tid, math.min(cfg.max_batch - batch, budget - placed, 1000))
    if ids then
      if bind then
        local tag = rcall('HGET', K_JOB .. ids[1], 'tag')
        rcall('HSET', K_WS .. w, 'status', 'running', 'tid', tid, 'tag', tag, 'batch', 0)
      end
      for _, id in ipairs(ids) do
        rcall('HSET', K_JOB .. id, 'status', 'assigned', 'worker', w)
      end
      rcall('RPUSH', K_WQ .. w, unpack(ids))
      rcall('ZINCRBY', K_BOUND .. tid, #ids, w)
      rcall('HINCRBY', K_WS .. w, 'batch', #ids)
      rcall('HINCRBY', K_COUNTS, 'pending', -#ids)
      rcall('HINCRBY', K_COUNTS, 'assigned', #ids)
      if bind then rcall('RPUSH', K_WAKEW .. w, '1') end
      placed = placed + #ids
    elseif bind then
      rcall('ZADD', K_IDLE, now_ms(), w)
    end
  end
  refresh_tag(tid, cfg)
end
return { placed, more, next_due() }
