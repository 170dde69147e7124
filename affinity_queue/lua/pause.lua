--[[
  pause: pause or resume placement, for the whole queue or for one tag.

  Atomic because a tag's pause flag and its place in the ready sets must change together, or the
  scheduler could place a paused tag or never see a resumed one. Running jobs are not touched.

  Safe to repeat: the state it sets is the same after two runs; with a request token a repeat is
  not applied again either (a late retry of a pause must not undo a resume made meanwhile).

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  request token ('' = none)
  ARGV[2]  '1' to pause, '0' to resume
  ARGV[3]  tag id, or '' for the whole queue
  Returns: 1.
]]
local token = ARGV[1]
if replay(token) then return 1 end
local on, tid = ARGV[2] == '1', ARGV[3]
if tid == '' then
  if on then rcall('HSET', K_CONFIG, 'paused', '1') else rcall('HDEL', K_CONFIG, 'paused') end
else
  if on then rcall('SADD', K_PAUSED_TAGS, tid) else rcall('SREM', K_PAUSED_TAGS, tid) end
  refresh_tag(tid, load_config())
end
if not on then wake_scheduler() end
return remember(token, 1)
