--[[
  watch: ask to be notified (on the done channel) when a job finishes.

  Atomic so that a job cannot finish between the caller's check and its request: either the job
  is finished now, or its finish will publish.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  job id
  Returns: the job's status when it is finished or unknown ('' for unknown); 0 when it is not
           finished yet (it will publish its id on the done channel when it is).
]]
local job = K_JOB .. ARGV[1]
local status = rcall('HGET', job, 'status')
if not status then return '' end
if status == 'completed' or status == 'failed' or status == 'cancelled' then return status end
rcall('HSET', job, 'notify', '1')
return 0
