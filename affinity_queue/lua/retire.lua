--[[
  retire: a stopping worker gives its queued jobs back at once and takes nothing new, while its
  active job (if any) runs to the end of the grace period; `deregister` follows.

  Atomic because the queued jobs must be back in their tag's list in the same instant as the
  worker stops accepting more of the tag; and the tag stays bound (its batch marked full) while
  the active job runs, so no other worker can start the tag and run it twice at once. The
  worker's wake list gets a 'stop' token here, not by a separate push, so no worker key is
  written for a worker whose lease is gone.

  Safe to repeat: each call hands back the next `budget` jobs of the queue, so a repeat does what
  the caller's next call would; once the queue is empty a repeat changes nothing.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  worker id
  ARGV[2]  budget: the most jobs to hand back in this call (>= 1)
  Returns: {jobs handed back, 1 when its queue is empty (else call again)}; ERR_LEASE_LOST (-1)
           when the lease is gone or expired.
]]
local w = ARGV[1]
local now = now_ms()
if not live_lease(w, now) then return ERR_LEASE_LOST end
local cfg = load_config()
local tids = {}
local n, empty = unqueue(w, cfg, tonumber(ARGV[2]), tids, now)
for t in pairs(tids) do refresh_tag(t, cfg) end
wake_scheduler_if_work()
if rcall('LLEN', K_WAKEW .. w) == 0 then rcall('RPUSH', K_WAKEW .. w, 'stop') end
if empty then return { n, 1 } end
return { n, 0 }
