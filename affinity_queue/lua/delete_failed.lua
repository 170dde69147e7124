--[[
  delete_failed: remove a dead letter and its record.

  Atomic so that the index and the record disappear together.

  Safe to repeat: the reply is kept under the request token; a repeat returns it (without the
  token a repeat finds nothing to delete).

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  request token ('' = none)
  ARGV[2]  job id
  Returns: 1 when deleted, 0 when the job is not a dead letter.
]]
local token, id = ARGV[1], ARGV[2]
local earlier = replay(token)
if earlier then return earlier end
if not rcall('ZSCORE', K_FAILED, id) then return remember(token, 0) end
unindex_failed(id)
rcall('ZREM', K_FAILED, id)
rcall('DEL', K_JOB .. id)
return remember(token, 1)
