--[[
ack.lua: after the flusher wrote user-days to Postgres, records what was written: each user's
entry gets f = the version written, and a user-day whose version is still that one is clean. A
shard-day with no dirty user left loses its mark; one that changed meanwhile keeps it (a newer
version must be flushed next), re-stamped to the read.

KEYS[1]      marks             <p>{b}:marks
KEYS[2..n]   shard-day hashes written, each once
ARGV[1]      when the flushed values were read (ms): a shard-day still dirty stays marked, but
             only since then (0: leave the score)
then, for each hash in KEYS order: its mark member, k, and k pairs (user, version written)

Returns the number of user-days made clean.
]]

local function fmt(x) return string.format('%.0f', x) end

local read_at = tonumber(ARGV[1])
local cleaned = 0
local at = 2
for i = 2, #KEYS do
  local hash, member, k = KEYS[i], ARGV[at], tonumber(ARGV[at + 1])
  at = at + 2
  local count = tonumber(redis.call('HGET', hash, '#'))
  if not count then
    -- The hash is gone (expired): nothing left to write.
    redis.call('ZREM', KEYS[1], member)
    at = at + 2 * k
  else
    for _ = 1, k do
      local user, written = ARGV[at], tonumber(ARGV[at + 1])
      at = at + 2
      local raw = redis.call('HGET', hash, user)
      if raw then
        -- The rest after f (threshold bits, holds: decide.lua) is kept as it is.
        local d, a, c, s, v, f, rest = string.match(raw, '^(%d+),(%d+),(%d+),(%d+),(%d+),(%d+)(.*)$')
        v, f = tonumber(v), tonumber(f)
        local now_flushed = math.min(written, v)
        if now_flushed > f then
          redis.call('HSET', hash, user, d .. ',' .. a .. ',' .. c .. ',' .. s .. ',' .. fmt(v) .. ',' .. fmt(now_flushed) .. rest)
          if now_flushed == v then
            count = count - 1
            cleaned = cleaned + 1
          end
        end
      end
    end
    if count < 0 then count = 0 end
    redis.call('HSET', hash, '#', count)
    if count == 0 then
      redis.call('ZREM', KEYS[1], member)
    elseif read_at > 0 then
      redis.call('ZADD', KEYS[1], 'XX', 'GT', read_at, member)
    end
  end
end
return cleaned
