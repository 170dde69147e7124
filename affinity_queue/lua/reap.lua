--[[
  reap: on the leader's behalf, recover workers whose lease expired.

  Atomic per worker slice so that the jobs a dead worker held return to the front of their tags
  in their order while the worker takes nothing new; fenced so that a paused ex-leader cannot.
  A worker stays in the lease index (expired, unplaceable) until all its jobs are back, so a
  long queue takes several calls and a call never does more than its budget.
  A live worker renews its lease long before it expires, so a slow worker is never raided; one
  that renews too late finds its lease expired and re-registers (see heartbeat).

  Safe to repeat: it works from the lease index and the dead workers' own lists; a repeat finds
  what is left, or nothing.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  fence: the caller's fencing number
  ARGV[2]  budget: the most jobs to hand back in this call (>= 1); at most REAP_WORKERS workers
           are handled per call, whatever their queues hold
  Returns: {workers recovered, jobs handed back, more, ids} where more = 1 when expired workers
           are left for another call and ids names the first NAMED_IDS jobs handed back;
           ERR_NOT_LEADER (-2) when the fence is stale.
]]
if not is_leader(ARGV[1]) then return ERR_NOT_LEADER end
local REAP_WORKERS = 10
local budget = tonumber(ARGV[2])
local dead = rcall('ZRANGEBYSCORE', K_WORKERS, '-inf', now_ms(), 'LIMIT', 0, REAP_WORKERS)
local cfg = load_config()
local workers, jobs, named = 0, 0, {}
for _, w in ipairs(dead) do
  if jobs >= budget then break end
  local n, gone, ids = hand_back(w, cfg, budget - jobs, false)
  jobs = jobs + n
  if gone then workers = workers + 1 end
  for i = 1, math.min(#ids, NAMED_IDS - #named) do named[#named + 1] = ids[i] end
end
local more = 0
if workers < #dead or #dead == REAP_WORKERS then more = 1 end
return { workers, jobs, more, named }
