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

if cfg.paused then return { 0, 0, next_due() } end

local placed, more = place(budget, cfg, now)
return { placed, more, next_due() }
