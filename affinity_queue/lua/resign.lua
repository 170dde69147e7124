--[[
  resign: give up the leadership lease (compare-and-delete) and wake a standby.

  Atomic so that only the holder can delete the lease, and a standby learns of it at once.

  Safe to repeat: a repeat finds the lease not held by the caller and does nothing.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  token
  Returns: 1 when the caller held the lease and released it, 0 otherwise.
]]
if rcall('HGET', K_LEADER, 'token') ~= ARGV[1] then return 0 end
rcall('DEL', K_LEADER, K_ELECTION)
rcall('RPUSH', K_ELECTION, '1')
return 1
