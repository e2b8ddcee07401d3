--[[
repair-marks.lua: puts back the mark of every shard-day that holds dirty users but lost its mark
(the marks set deleted by hand, or by another release). A decision marks a shard-day only when one
of its users turns dirty, so without this sweep a lost mark would keep those users' later changes
from Postgres until they were next flushed clean. The flusher's store runs it every
MARK_REPAIR_INTERVAL_MS over the days it decided on recently: no keyspace scan, the hash names are
known (every shard of the bucket for each day).

KEYS[1]     marks             <p>{b}:marks
KEYS[2..n]  shard-day hashes
ARGV[1]     now, ms (the restored mark's score: the change is at least this old... or newer, which
            only makes the reported lag smaller until the next flush)
ARGV[2..n]  the mark member of each hash, in KEYS order

Returns the number of marks put back.
]]

local restored = 0
for i = 2, #KEYS do
  local count = tonumber(redis.call('HGET', KEYS[i], '#'))
  if count and count > 0 then
    restored = restored + redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[i])
  end
end
return restored
