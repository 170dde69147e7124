--[[
  register: a new worker takes a lease and joins the idle workers.

  Atomic because the lease index, the state hash and the idle set must appear together: the
  leader's reaper or dispatcher must never see a worker in one and not the others.

  Safe to repeat: a worker id is fresh for every registration, so an id that already has a lease
  is a retry of this call after a lost reply; it answers again and resets nothing (the leader may
  already have bound the worker).

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  worker id (fresh for every registration)
  ARGV[2]  lease length in ms (HEARTBEAT_TIMEOUT)
  ARGV[3]  host name, ARGV[4] pid (for monitoring)
  ARGV[5]  a new epoch id, kept only if the data set has none yet
  Returns: {the data set's epoch id}; {ERR_LAYOUT (-6), worker queue prefix, worker state prefix}
           when the queue's live processes use other worker prefixes (nothing written).
]]
local w = ARGV[1]
if rcall('ZSCORE', K_WORKERS, w) then return { rcall('GET', K_EPOCH) or ARGV[5] } end
local theirs = check_layout()
if theirs then return { ERR_LAYOUT, theirs[1], theirs[2] } end
local now = now_ms()
local epoch = rcall('GET', K_EPOCH)
if not epoch then
  epoch = ARGV[5]
  rcall('SET', K_EPOCH, epoch)
end
rcall('ZADD', K_WORKERS, now + tonumber(ARGV[2]), w)
rcall('HSET', K_WS .. w, 'status', 'idle', 'tid', '', 'tag', '', 'batch', 0, 'active', '',
  'host', ARGV[3], 'pid', ARGV[4], 'since', now)
rcall('ZADD', K_IDLE, now, w)
wake_scheduler_if_work()
return { epoch }
