--[[
reset.lua: zeroes some of a user's counters for one day (admin manual reset).

KEYS[1]  shard-day hash   <p>{b}:u:<day>:<shard>
KEYS[2]  the day before   <p>{b}:u:<day - 1>:<shard>
KEYS[3]  gauges           <p>{b}:g:<shard>:<period>
KEYS[4]  last gauges      <p>{b}:g:<shard>:<period - 1>
KEYS[5]  marks            <p>{b}:marks
KEYS[6]  epoch            <p>{b}:epoch

ARGV[1]  user id
ARGV[2]  now, ms
ARGV[3]  lifetime of a new shard-day hash, seconds (until 2 days after the day ends,
         measured on the caller's clock, so an injected clock keeps keys alive)
ARGV[4]  mark member "<day>:<shard>"
ARGV[5]  start of the day, ms
ARGV[6]  lifetime of a new gauges hash, seconds
ARGV[7..] positions to zero in the entry "d,a,c,s,v,f" (1-4; 4, storage, zeroes the gauge)

The entry's optional rest ",t,h1,h2,h3,x" (decide.lua) is kept, except that the threshold bits
of the zeroed daily metrics are cleared: they can reach their thresholds again. Holds stay.

Returns 1 when reset, 2 when the state must be loaded from Postgres first (as decide.lua: no
entry that day, and no entry the day before or gauge that this bucket's epoch vouches for).
]]

local function fmt(x) return string.format('%.0f', x) end

local hash, user = KEYS[1], ARGV[1]
local state = redis.call('HMGET', hash, user, '#')
local entry
if state[1] then
  entry = {}
  for n in string.gmatch(state[1], '%d+') do entry[#entry + 1] = tonumber(n) end
  if entry[7] == nil then entry[7] = 0 end
else
  local epoch = tonumber(redis.call('GET', KEYS[6]) or '')
  if not epoch or epoch > tonumber(ARGV[5]) then return 2 end
  local storage
  local before = redis.call('HGET', KEYS[2], user)
  if before then
    storage = tonumber(string.match(before, '^%d+,%d+,%d+,(%d+),'))
  else
    storage = tonumber(redis.call('HGET', KEYS[3], user) or redis.call('HGET', KEYS[4], user) or '')
    if not storage then return 2 end
  end
  entry = { 0, 0, 0, storage, 0, 0, 0 }
end
local count = tonumber(state[2])
local is_new = not count
count = count or 0

local zeroes_storage = false
for i = 7, #ARGV do
  local position = tonumber(ARGV[i])
  entry[position] = 0
  if position == 4 then
    zeroes_storage = true
  else
    -- Bits 2(p-1) and 2(p-1)+1: the 80 % and 100 % thresholds of position p.
    local low = 2 ^ (2 * (position - 1))
    local bits = entry[7]
    if math.floor(bits / low) % 2 == 1 then bits = bits - low end
    if math.floor(bits / (2 * low)) % 2 == 1 then bits = bits - 2 * low end
    entry[7] = bits
  end
end
if zeroes_storage or entry[5] == 0 then
  redis.call('HSET', KEYS[3], user, fmt(entry[4]))
  redis.call('EXPIRE', KEYS[3], ARGV[6], 'NX')
end
local was_clean = entry[5] == entry[6]
entry[5] = entry[5] + 1
if was_clean then count = count + 1 end
local text = fmt(entry[1]) .. ',' .. fmt(entry[2]) .. ',' .. fmt(entry[3]) .. ',' .. fmt(entry[4]) .. ',' .. fmt(entry[5]) .. ',' .. fmt(entry[6])
if #entry > 7 then
  for i = 7, #entry do text = text .. ',' .. fmt(entry[i]) end
elseif entry[7] > 0 then
  text = text .. ',' .. fmt(entry[7])
end
redis.call('HSET', hash, user, text, '#', count)
if is_new then redis.call('EXPIRE', hash, ARGV[3]) end
if was_clean then redis.call('ZADD', KEYS[5], 'NX', ARGV[2], ARGV[4]) end
return 1
