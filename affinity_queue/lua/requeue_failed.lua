--[[
  requeue_failed: put a dead letter back at the front of its tag, with its attempts starting over.

  Atomic because leaving the dead-letter set and entering the tag must be one step: a job in both
  or in neither would run twice or never.

  Safe to repeat: the reply is kept under the request token; a repeat returns it (without the
  token a repeat finds the job no longer a dead letter and changes nothing).

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  request token ('' = none)
  ARGV[2]  job id
  Returns: 1 when requeued, 0 when the job is not a dead letter.
]]
local token, id = ARGV[1], ARGV[2]
local earlier = replay(token)
if earlier then return earlier end
local job = K_JOB .. id
local tid = rcall('HGET', job, 'tid')
if not tid or not rcall('ZSCORE', K_FAILED, id) then return remember(token, 0) end
unindex_failed(id)
rcall('ZREM', K_FAILED, id)
rcall('PERSIST', job)
rcall('HSET', job, 'status', 'pending', 'attempts', 0, 'worker', '')
rcall('HDEL', job, 'finished', 'error', 'due', 'front', 'cancel')
-- The front of its tag, except behind a strict retry that holds the tag: that one goes first
-- (a tag held by its rate limit has no retry at its head: its due time is not ahead).
local head = rcall('LINDEX', K_TAG .. tid, 0)
if head and rcall('ZSCORE', K_HELD, tid)
    and (tonumber(rcall('HGET', K_JOB .. head, 'due')) or 0) > now_ms() then
  rcall('LINSERT', K_TAG .. tid, 'AFTER', head, id)
else
  rcall('LPUSH', K_TAG .. tid, id)
end
count('pending', 1)
backlog(tid, 1)
refresh_tag(tid, load_config())
wake_scheduler_if_work()
return remember(token, 1)
