--[[
  reap: on the leader's behalf, recover workers whose lease expired, and orphaned worker keys.

  Atomic per call so that a dead worker's jobs return to the front of their tags, its tag is
  unbound and its keys are deleted in one instant; fenced so that a paused ex-leader cannot.
  A live worker renews its lease long before it expires, so a slow worker is never raided.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  fence: the caller's fencing number
  ARGV[2]  the most expired workers to recover in this call
  ARGV[3..] worker ids found by the maintenance SCAN; recovered only if absent from the index
  Returns: {workers recovered, jobs handed back}; ERR_NOT_LEADER (-2) when the fence is stale.
]]
if not is_leader(ARGV[1]) then return ERR_NOT_LEADER end
local dead = rcall('ZRANGEBYSCORE', K_WORKERS, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[2]))
for i = 3, #ARGV do
  if not rcall('ZSCORE', K_WORKERS, ARGV[i]) then dead[#dead + 1] = ARGV[i] end
end
local cfg = load_config()
local jobs = 0
for _, w in ipairs(dead) do jobs = jobs + hand_back(w, cfg) end
return { #dead, jobs }
