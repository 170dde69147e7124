--[[
  heartbeat: renew the leases of one process's workers.

  Atomic so that a lease is only ever extended while it is still valid: a worker whose lease
  expired (the leader may be recovering its jobs already, or did) stays dead and must re-register
  under a new id. It also wakes a bound worker that has work and runs nothing, in case its wake-up
  was lost.

  Safe to repeat: renewing twice sets the same expiry; a spare wake-up token is harmless.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  the epoch id the process registered under
  ARGV[2]  lease length in ms
  ARGV[3..] worker ids
  Returns: {ids whose lease was gone or expired (not renewed), ids of active jobs whose cancellation was
           requested}; ERR_DATA_LOST (-4) when the epoch changed, i.e. Redis lost the queue's data.
]]
if rcall('GET', K_EPOCH) ~= ARGV[1] then return ERR_DATA_LOST end
local now = now_ms()
local until_ms = now + tonumber(ARGV[2])
local lost, cancel = {}, {}
for i = 3, #ARGV do
  local w = ARGV[i]
  if live_lease(w, now) then
    rcall('ZADD', K_WORKERS, until_ms, w)
    local st = rcall('HMGET', K_WS .. w, 'active', 'status')
    local active = active_ids(st[1])
    if #active > 0 then
      for _, id in ipairs(active) do
        if rcall('HGET', K_JOB .. id, 'cancel') == '1' then cancel[#cancel + 1] = id end
      end
    elseif st[2] == 'running' and rcall('LLEN', K_WQ .. w) > 0
        and rcall('LLEN', K_WAKEW .. w) == 0 then
      -- Bound with work and nothing running, and no wake-up waiting: the worker missed its
      -- token (a reply lost in transit). Wake it again; a spare token is harmless.
      rcall('RPUSH', K_WAKEW .. w, 'stalled')
    end
  else
    lost[#lost + 1] = w
  end
end
return { lost, cancel }
