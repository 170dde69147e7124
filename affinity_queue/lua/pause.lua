--[[
  pause: pause or resume placement, for the whole queue or for one tag.

  Atomic because a tag's pause flag and its place in the ready sets must change together, or the
  scheduler could place a paused tag or never see a resumed one. Running jobs are not touched.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  '1' to pause, '0' to resume
  ARGV[2]  tag id, or '' for the whole queue
  Returns: 1.
]]
local on, tid = ARGV[1] == '1', ARGV[2]
if tid == '' then
  if on then rcall('HSET', K_CONFIG, 'paused', '1') else rcall('HDEL', K_CONFIG, 'paused') end
else
  if on then rcall('SADD', K_PAUSED_TAGS, tid) else rcall('SREM', K_PAUSED_TAGS, tid) end
  refresh_tag(tid, load_config())
end
if not on and rcall('LLEN', K_WAKE) == 0 then rcall('RPUSH', K_WAKE, '1') end
return 1
