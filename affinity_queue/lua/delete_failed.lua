--[[
  delete_failed: remove a dead letter and its record.

  Atomic so that the index and the record disappear together.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  job id
  Returns: 1 when deleted, 0 when the job is not a dead letter.
]]
if rcall('ZREM', K_FAILED, ARGV[1]) == 0 then return 0 end
rcall('DEL', K_JOB .. ARGV[1])
return 1
