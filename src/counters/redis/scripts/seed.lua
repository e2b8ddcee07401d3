--[[
seed.lua: rebuilds a user's state in Redis from Postgres after Redis lost it (restart without
persistence, failover, eviction). Never overwrites state that exists: a concurrent decision on
another replica may already have seeded and spent.

KEYS[1]  day hash    <p>{b}:d:<user>:<day>
KEYS[2]  gauge       <p>{b}:g:<user>
KEYS[3]  epoch       <p>{b}:epoch

ARGV[1..4]  d a c s for the day (micro-units, from daily_usage)
ARGV[5]     version of that daily_usage row
ARGV[6]     the storage gauge (micro-units, latest daily_usage.storage_gb)
ARGV[7]     lifetime of a new day hash, seconds (until 2 days after the day ends,
         measured on the caller's clock, so an injected clock keeps keys alive)
ARGV[8]     now, ms
ARGV[9]     lifetime of the gauge, seconds (renewed by every write to it)

Returns 1.
]]

if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], ARGV[6], 'EX', ARGV[9])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'd', ARGV[1], 'a', ARGV[2], 'c', ARGV[3], 's', ARGV[4], 'v', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ARGV[7])
end
-- From now on a missing day hash in this bucket is a fresh day only for days starting later.
redis.call('SET', KEYS[3], ARGV[8], 'NX')
return 1
