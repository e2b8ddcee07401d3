--[[
reset.lua: zeroes some of a user's counters for one day (admin manual reset).

KEYS[1]  day hash    <p>{b}:d:<user>:<day>
KEYS[2]  gauge       <p>{b}:g:<user>
KEYS[3]  dirty set   <p>{b}:dirty
KEYS[4]  epoch       <p>{b}:epoch

ARGV[1]  now, ms
ARGV[2]  start of the day, ms
ARGV[3]  lifetime of a new day hash, seconds (until 2 days after the day ends,
         measured on the caller's clock, so an injected clock keeps keys alive)
ARGV[4]  dirty member "<user>:<day>"
ARGV[5]  lifetime of the gauge, seconds (renewed when it is zeroed)
ARGV[6..] fields to zero (d a c s; s also zeroes the gauge)

Returns 1 when reset, 2 when the state must be loaded from Postgres first.
]]

local gauge = redis.call('GET', KEYS[2])
if not gauge then return 2 end
local exists = redis.call('EXISTS', KEYS[1]) == 1
if not exists then
  local epoch = redis.call('GET', KEYS[4])
  if not epoch or tonumber(epoch) > tonumber(ARGV[2]) then return 2 end
end

local hset = {}
for i = 6, #ARGV do
  hset[#hset + 1] = ARGV[i]
  hset[#hset + 1] = '0'
  if ARGV[i] == 's' then redis.call('SET', KEYS[2], '0', 'EX', ARGV[5]) end
end
if not exists then
  -- A new day hash records the gauge as it stands (unless it is being zeroed just above).
  hset[#hset + 1] = 's'
  hset[#hset + 1] = redis.call('GET', KEYS[2])
end
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], unpack(hset))
if not exists then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
redis.call('ZADD', KEYS[3], 'NX', ARGV[1], ARGV[4])
return 1
