--[[
  watch: ask to be notified (on the done channel) when a job finishes.

  Atomic so that a job cannot finish between the caller's check and its request: either the job
  is finished now, or its finish will publish.

  Safe to repeat: it only ever lengthens the watch.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  job id
  ARGV[2]  how long the caller will wait, in ms: until then the finish publishes and retention
           keeps the finished record for it
  Returns: the job's status when it is finished or unknown ('' for unknown); 0 when it is not
           finished yet (it will publish its id on the done channel when it is).
]]
local job = K_JOB .. ARGV[1]
local f = rcall('HMGET', job, 'status', 'notify')
local status = f[1]
if not status then return '' end
if status == 'completed' or status == 'failed' or status == 'cancelled' then return status end
local until_ms = now_ms() + tonumber(ARGV[2])
if until_ms > (tonumber(f[2]) or 0) then
  rcall('HSET', job, 'notify', until_ms)
end
-- Finishes read their jobs' notify fields only until the last watch ends (see finish_run).
if until_ms > (tonumber(rcall('HGET', K_CONFIG, 'notify')) or 0) then
  rcall('HSET', K_CONFIG, 'notify', until_ms)
end
return 0
