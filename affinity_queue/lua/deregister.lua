--[[
  deregister: a stopping worker hands its jobs back to the front of their tags and leaves.

  Atomic for the same reason as the reaper: the jobs must be back in their tags' lists and the tag
  unbound in the same instant, or they could be lost or run on two workers.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  worker id
  Returns: the number of jobs handed back; ERR_LEASE_LOST (-1) when the lease was already gone.
]]
if not rcall('ZSCORE', K_WORKERS, ARGV[1]) then return ERR_LEASE_LOST end
return hand_back(ARGV[1], load_config())
