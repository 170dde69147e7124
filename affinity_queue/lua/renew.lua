--[[
  renew: extend the leadership lease, only if the caller still holds it (compare-and-renew).

  Atomic so that a leader whose lease expired and was taken by another can never extend the
  successor's lease with a blind EXPIRE.

  Safe to repeat: renewing twice leaves the same holder with a lease at least as long.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  token, ARGV[2] lease length in ms
  Returns: 1 when renewed, 0 when the caller no longer leads.
]]
if rcall('HGET', K_LEADER, 'token') ~= ARGV[1] then return 0 end
rcall('PEXPIRE', K_LEADER, ARGV[2])
rcall('HSET', K_LEADER, 'heartbeat', now_ms())
return 1
