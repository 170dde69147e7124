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
  ARGV[12] digest of the term's per-tag limits, weights and rates: they are rewritten only
           when it changed
  ARGV[13] '1' when the per-tag settings follow, '0' when the call leaves them out (10,000
           limits take milliseconds to pass and to write, so a caller sends them only when asked)
  ARGV[14] default weight of a tag, ARGV[15] default rate limit (tasks/s, 0 = none)
  ARGV[16] L and ARGV[17] M: how many (tag id, value) pairs of limits, then of weights follow
  ARGV[18..] L pairs (tag id, concurrency limit), M pairs (tag id, weight), then pairs (tag id,
           rate limit in tasks/s), any number (written in slices: Lua's unpack takes a few
           thousand values at most, and a script must not fail after a write)
  Returns: the new fencing number; 0 when another candidate holds the lease;
           ERR_NEED_LIMITS (-7) when the limits changed and the call left them out (nothing
           written: call again with them);
           {ERR_LAYOUT (-6), worker queue prefix, worker state prefix} when the queue's live
           processes use other worker prefixes (nothing written).
  Safe to repeat: a candidate that still holds the lease (a retry, or its own term lapsed by its
  clock) starts a new term with a higher fence; the earlier one is then stale.
]]
local pairs_at, n_limits, n_weights = 18, tonumber(ARGV[16]), tonumber(ARGV[17])
if (#ARGV - 17) % 2 ~= 0 or (#ARGV - 17) / 2 < n_limits + n_weights then
  return redis.error_reply('elect: per-tag settings must come in pairs, as many as announced')
end
local holder = rcall('HGET', K_LEADER, 'token')
if holder and holder ~= ARGV[1] then return 0 end
local new_limits = rcall('HGET', K_CONFIG, 'limits_digest') ~= ARGV[12]
if new_limits and ARGV[13] ~= '1' then return ERR_NEED_LIMITS end
local theirs = check_layout()
if theirs then return { ERR_LAYOUT, theirs[1], theirs[2] } end
local now = now_ms()
local fence = math.max((tonumber(rcall('GET', K_FENCE)) or 0) + 1, now)
rcall('SET', K_FENCE, int(fence))
rcall('HSET', K_LEADER, 'token', ARGV[1], 'fence', int(fence), 'node', ARGV[3], 'host', ARGV[4],
  'pid', ARGV[5], 'since', now, 'heartbeat', now)
rcall('PEXPIRE', K_LEADER, ARGV[2])
rcall('HSET', K_CONFIG, 'max_batch', ARGV[6], 'concurrency', ARGV[7], 'keep_completed', ARGV[8],
  'completed_ttl', ARGV[9], 'keep_failed', ARGV[10], 'failed_ttl', ARGV[11], 'weight', ARGV[14],
  'rate', ARGV[15])
if new_limits then
  local weights_at = pairs_at + 2 * n_limits
  local rates_at = weights_at + 2 * n_weights
  for _, part in ipairs({ { K_LIMITS, pairs_at, weights_at - 1 },
      { K_WEIGHTS, weights_at, rates_at - 1 }, { K_RATES, rates_at, #ARGV } }) do
    rcall('DEL', part[1])
    for i = part[2], part[3], 1000 do
      rcall('HSET', part[1], unpack(ARGV, i, math.min(i + 999, part[3])))
    end
  end
  rcall('HSET', K_CONFIG, 'limits_digest', ARGV[12])
end
-- Dispatch reads rate limits only when some tag has one.
local rated = tonumber(ARGV[15]) > 0 or rcall('EXISTS', K_RATES) == 1
rcall('HSET', K_CONFIG, 'rated', rated and '1' or '0')
return fence
