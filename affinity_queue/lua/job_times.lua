--[[
  job_times: read when jobs were added, due and started, for the wait-time histogram.

  A read only; one script call for the jobs that started in one event-loop turn, so the metrics
  cost one command per turn instead of one per job. Not atomic by need: each triple is read in
  one step, and a record that is gone reads as empty.

  Safe to repeat: it writes nothing.

  KEYS: the shared table (see _shared.lua).
  ARGV[1..] job ids
  Returns: {created, due, started, created, due, started, ...} in ms of Redis time, one triple
           per id, each '' when unknown (due: not delayed).
]]
local out = {}
for i = 1, #ARGV do
  local f = rcall('HMGET', K_JOB .. ARGV[i], 'created', 'due', 'started')
  out[#out + 1] = f[1] or ''
  out[#out + 1] = f[2] or ''
  out[#out + 1] = f[3] or ''
end
return out
