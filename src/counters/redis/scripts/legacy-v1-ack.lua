--[[
legacy-v1-ack.lua (layout version 1, legacy-v1.ts): after the flusher wrote user-days to Postgres, takes them off the dirty set, unless they
changed again meanwhile (a newer version must be flushed next tick).

KEYS[1]      dirty set  <p>{b}:dirty
KEYS[2..n+1] day hashes of the flushed members
ARGV[1]      when the flushed values were read (ms): a member that changed since stays dirty,
             but only since then
ARGV[2i], ARGV[2i+1]  member i and the version that was written

Returns the number of members removed.
]]

local removed = 0
for i = 2, #KEYS do
  local member = ARGV[(i - 2) * 2 + 2]
  local written = tonumber(ARGV[(i - 2) * 2 + 3])
  local v = redis.call('HGET', KEYS[i], 'v')
  if (not v) or tonumber(v) <= written then
    removed = removed + redis.call('ZREM', KEYS[1], member)
  elseif tonumber(ARGV[1]) > 0 then
    redis.call('ZADD', KEYS[1], 'XX', 'GT', ARGV[1], member)
  end
end
return removed
