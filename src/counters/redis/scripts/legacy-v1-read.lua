--[[
legacy-v1-read.lua: the flusher's read of one bucket's dirty user-days of layout version 1
(legacy-v1.ts), in one call, while an upgraded deployment drains them.

KEYS[1..n]  day hashes <p>{b}:d:<user>:<day> of one bucket

Returns one string: for each key, "d,a,c,s,v" (micro-units and version) or "-" when the hash is
gone (expired), joined by ";" in KEYS order. One string decodes far cheaper than n arrays.
]]

local out = {}
for i = 1, #KEYS do
  local r = redis.call('HMGET', KEYS[i], 'd', 'a', 'c', 's', 'v')
  if r[5] then
    out[i] = (r[1] or '0') .. ',' .. (r[2] or '0') .. ',' .. (r[3] or '0') .. ',' .. (r[4] or '0') .. ',' .. r[5]
  else
    out[i] = '-'
  end
end
return table.concat(out, ';')
