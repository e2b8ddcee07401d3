--[[
read.lua: the flusher's read of one bucket's dirty user-days, in one call.

KEYS[1]     marks             <p>{b}:marks
KEYS[2..n]  shard-day hashes  <p>{b}:u:<day>:<shard>, oldest mark first
ARGV[1]     most user-days to return: whole shard-days are read until this many are collected
ARGV[2..n]  the mark member "<day>:<shard>" of each hash, in KEYS order

Returns one string: for each hash, its dirty users (v > f) as "user,d,a,c,s,v" joined by ";",
and the hashes joined by "|" in KEYS order; a hash not read (the bound was reached) is "~". A
mark whose hash is gone (expired) or holds no dirty user is taken off here: nothing is left to
write, and the next change of a user marks the shard-day again.
]]

local limit = tonumber(ARGV[1])
local collected = 0
local out = {}
for i = 2, #KEYS do
  if collected >= limit then
    out[#out + 1] = '~'
  else
    local flat = redis.call('HGETALL', KEYS[i])
    local rows = {}
    for j = 1, #flat, 2 do
      local user = flat[j]
      if user ~= '#' then
        -- An entry may go on after f (threshold bits, holds: decide.lua); none of it is flushed.
        local d, a, c, s, v, f = string.match(flat[j + 1], '^(%d+),(%d+),(%d+),(%d+),(%d+),(%d+)')
        if tonumber(v) > tonumber(f) then rows[#rows + 1] = user .. ',' .. d .. ',' .. a .. ',' .. c .. ',' .. s .. ',' .. v end
      end
    end
    if #rows == 0 then redis.call('ZREM', KEYS[1], ARGV[i]) end
    collected = collected + #rows
    out[#out + 1] = table.concat(rows, ';')
  end
end
return table.concat(out, '|')
