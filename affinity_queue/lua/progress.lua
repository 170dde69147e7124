--[[
  progress: store a running job's progress value (ctx.set_progress) on its record.

  Atomic because the write must happen only while the job is still active on this worker: read
  and write split up, the job could finish (or be handed to another worker, or be trimmed by
  retention) in between, and the write would resurrect a finished or trimmed record without
  its TTL, or overwrite what its new run reports.

  Safe to repeat: it sets the same field to the same value, and only under the same check.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  worker id
  ARGV[2]  job id
  ARGV[3]  progress value (JSON text; its size is checked by the caller)
  Returns: 1 when written; 0 when the job is not in this worker's active run any more (finished,
           handed back, or its worker's lease expired), nothing written.
]]
local w, id = ARGV[1], ARGV[2]
if not live_lease(w, now_ms()) then return 0 end
local running = false
for _, active in ipairs(active_ids(rcall('HGET', K_WS .. w, 'active'))) do
  if active == id then running = true end
end
if not running then return 0 end
rcall('HSET', K_JOB .. id, 'progress', ARGV[3])
return 1
