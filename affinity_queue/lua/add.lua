--[[
  add: accept tasks; each joins the end of its tag's pending list.

  Atomic because the job record, its place in the tag's list, the counters and the tag's ready
  state must change together: a scheduler that ran in between would see a job it cannot place,
  or a tag that looks empty while it holds work.

  KEYS: the shared table (see _shared.lua); uses job, tag, bound, seq, counts, ready:*, idle,
        wake, config, limits.
  ARGV[1]        n, the number of tasks
  ARGV[2 + 4i..] for task i (0-based): type, identify_tag, tag id (hex), payload (JSON text)
  Returns: {id of the first job (the others follow it consecutively), Redis time in ms}.
]]
local n = tonumber(ARGV[1])
local first = rcall('INCRBY', K_SEQ, n) - n + 1
local now = now_ms()
local fresh = {}
for i = 0, n - 1 do
  local b = 2 + i * 4
  local id = int(first + i)
  local tid = ARGV[b + 2]
  rcall('HSET', K_JOB .. id, 'type', ARGV[b], 'tag', ARGV[b + 1], 'tid', tid,
    'payload', ARGV[b + 3], 'status', 'pending', 'attempts', 0, 'created', now)
  if rcall('RPUSH', K_TAG .. tid, id) == 1 then fresh[tid] = true end
end
rcall('HINCRBY', K_COUNTS, 'pending', n)
-- Only a tag whose list was empty changes readiness: elsewhere the head is unchanged.
local cfg = load_config()
for tid in pairs(fresh) do refresh_tag(tid, cfg) end
wake_scheduler_if_work()
return { first, now }
