--[[
  deregister: a stopping worker hands its jobs back to the front of their tags and leaves.

  Atomic for the same reason as the reaper: the jobs must be back in their tags' lists and the tag
  unbound in the same instant, or they could be lost or run on two workers.

  Safe to repeat: once the worker is gone a repeat answers ERR_LEASE_LOST and changes nothing.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  worker id
  ARGV[2]  budget: the most jobs to hand back in this call (>= 1)
  ARGV[3]  '1' when no job of the worker's active run has started (its process stopped while
           the worker was idle: the run came with a wake-up it did not act on); its attempt is
           then taken back. '' otherwise: an active run may have run, and counts an attempt.
  Returns: {jobs handed back, 1 when the worker is gone (else call again), ids of the first
           NAMED_IDS of them}; ERR_LEASE_LOST (-1) when the worker was already recovered.
]]
if not rcall('ZSCORE', K_WORKERS, ARGV[1]) then return ERR_LEASE_LOST end
local n, gone, named = hand_back(ARGV[1], load_config(), tonumber(ARGV[2]), ARGV[3] == '1')
if gone then return { n, 1, named } end
return { n, 0, named }
