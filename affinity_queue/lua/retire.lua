--[[
  retire: a stopping worker gives its queued jobs back at once and takes nothing new, while its
  active job (if any) runs to the end of the grace period; `deregister` follows.

  Atomic because the queued jobs must be back in their tag's list in the same instant as the
  worker stops accepting more of the tag; and the tag stays bound (its batch marked full) while
  the active job runs, so no other worker can start the tag and run it twice at once.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  worker id
  Returns: the number of jobs handed back; ERR_LEASE_LOST (-1) when the lease was already gone.
]]
local w = ARGV[1]
if not rcall('ZSCORE', K_WORKERS, w) then return ERR_LEASE_LOST end
local cfg = load_config()
local ids = rcall('LRANGE', K_WQ .. w, 0, -1)
rcall('DEL', K_WQ .. w)
local tids = {}
local n_back = requeue_front(ids, tids)
rcall('HINCRBY', K_COUNTS, 'assigned', int(-#ids))
rcall('HINCRBY', K_COUNTS, 'pending', n_back)
rcall('ZREM', K_IDLE, w)
rcall('HSET', K_WS .. w, 'retiring', '1')  -- release() keeps it out of the idle set
local tid = rcall('HGET', K_WS .. w, 'tid')
if tid and tid ~= '' then
  rcall('ZADD', K_BOUND .. tid, cfg.max_batch, w)
  tids[tid] = true
end
for t in pairs(tids) do refresh_tag(t, cfg) end
wake_scheduler_if_work()
return n_back
