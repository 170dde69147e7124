--[[
  heartbeat: renew the leases of one process's workers.

  Atomic so that a lease is only ever extended while it still exists: a worker the leader already
  declared dead stays dead and must re-register under a new id.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  the epoch id the process registered under
  ARGV[2]  lease length in ms
  ARGV[3..] worker ids
  Returns: {ids whose lease was gone (not renewed), ids of active jobs whose cancellation was
           requested}; ERR_DATA_LOST (-4) when the epoch changed, i.e. Redis lost the queue's data.
]]
if rcall('GET', K_EPOCH) ~= ARGV[1] then return ERR_DATA_LOST end
local until_ms = now_ms() + tonumber(ARGV[2])
local lost, cancel = {}, {}
for i = 3, #ARGV do
  local w = ARGV[i]
  if rcall('ZSCORE', K_WORKERS, w) then
    rcall('ZADD', K_WORKERS, until_ms, w)
    local active = rcall('HGET', K_WS .. w, 'active')
    if active and active ~= '' and rcall('HGET', K_JOB .. active, 'cancel') == '1' then
      cancel[#cancel + 1] = active
    end
  else
    lost[#lost + 1] = w
  end
end
return { lost, cancel }
