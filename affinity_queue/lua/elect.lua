--[[
  elect: take the leadership lease if nobody holds it, start a new term, install its config.

  Atomic because checking for a holder and taking the lease must be one step (else two candidates
  both win), and because the term's fencing number and config must be in place before anything
  is fenced against them.

  The fencing number only grows: it is max(last + 1, Redis time in ms), so a Redis restart that
  lost the counter still yields a number above every earlier term's.

  KEYS: the shared table (see _shared.lua).
  ARGV[1]  token (random, the candidate's)
  ARGV[2]  lease length in ms (ELECTION_LOCK_TTL)
  ARGV[3]  node id, ARGV[4] host, ARGV[5] pid
  ARGV[6]  MAX_BATCH_SIZE, ARGV[7] default per-tag concurrency
  ARGV[8]  KEEP_COMPLETED, ARGV[9] COMPLETED_TTL (ms), ARGV[10] KEEP_FAILED, ARGV[11] FAILED_TTL
  ARGV[12..] pairs of (tag id, concurrency limit)
  Returns: the new fencing number; 0 when another candidate holds the lease.
  A candidate that still holds the lease (its own term lapsed by its clock) starts a new term.
]]
local holder = rcall('HGET', K_LEADER, 'token')
if holder and holder ~= ARGV[1] then return 0 end
local now = now_ms()
local fence = math.max((tonumber(rcall('GET', K_FENCE)) or 0) + 1, now)
rcall('SET', K_FENCE, int(fence))
rcall('HSET', K_LEADER, 'token', ARGV[1], 'fence', int(fence), 'node', ARGV[3], 'host', ARGV[4],
  'pid', ARGV[5], 'since', now, 'heartbeat', now)
rcall('PEXPIRE', K_LEADER, ARGV[2])
rcall('HSET', K_CONFIG, 'max_batch', ARGV[6], 'concurrency', ARGV[7], 'keep_completed', ARGV[8],
  'completed_ttl', ARGV[9], 'keep_failed', ARGV[10], 'failed_ttl', ARGV[11])
rcall('DEL', K_LIMITS)
if #ARGV > 11 then rcall('HSET', K_LIMITS, unpack(ARGV, 12)) end
return fence
