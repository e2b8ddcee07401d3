--[[
seed.lua: rebuilds a user's entry of a day when decide.lua found none, neither that day nor the
day before (Redis lost it, or the user was away a day or more). Never overwrites an entry that
exists: a concurrent decision on another replica may already have seeded and spent.

KEYS[1]  shard-day hash       <p>{b}:u:<day>:<shard>
KEYS[2]  marks                <p>{b}:marks
KEYS[3]  epoch                <p>{b}:epoch
KEYS[4]  v1 day hash          <p>{b}:d:<user>:<day>   (layout version 1, legacy-v1.ts)
KEYS[5]  v1 gauge             <p>{b}:g:<user>
KEYS[6]  v1 dirty set         <p>{b}:dirty
KEYS[7]  gauges               <p>{b}:g:<shard>:<period of the day>
KEYS[8]  last gauges          <p>{b}:g:<shard>:<period - 1>
KEYS[9]  the day before       <p>{b}:u:<day - 1>:<shard>

ARGV[1]     user id
ARGV[2..5]  d a c (micro-units, from daily_usage) and the storage gauge (latest storage_gb up to
            that day)
ARGV[6]     version of that daily_usage row (0: none)
ARGV[7]     lifetime of a new shard-day hash, seconds (until 2 days after the day ends, measured on
            the caller's clock, so an injected clock keeps keys alive)
ARGV[8]     now, ms
ARGV[9]     mark member "<day>:<shard>"
ARGV[10]    v1 dirty-set member "<user>:<day>"
ARGV[11]    lifetime of a new gauges hash, seconds

A user-day still in layout version 1 (an upgrade in progress) is moved here instead, in this
script: its v1 day hash is at least as new as Postgres (whose rows come from it), so it wins; it is
deleted there and its entry here is dirty, so the flusher writes it (the version guard makes that a
no-op when Postgres has it already). Otherwise the storage is what Redis still holds, newest first
(yesterday's entry, the gauges of this and the last period, a v1 gauge): it is at least as new as
Postgres, whose rows come from it. Only without any of them does ARGV[5] give it.

The gauge is written too (the user is known to this Redis from now on).

Returns 1.
]]

local function fmt(x) return string.format('%.0f', x) end

local hash, user = KEYS[1], ARGV[1]
-- From now on this bucket's state was (re)built at this time (the idempotency window).
redis.call('SET', KEYS[3], ARGV[8], 'NX')
local state = redis.call('HMGET', hash, user, '#')
if state[1] then return 1 end
local count = tonumber(state[2])
local is_new = not count
count = count or 0

local entry, dirty
local v1 = redis.call('HMGET', KEYS[4], 'd', 'a', 'c', 's', 'v')
if v1[5] then
  local storage = redis.call('GET', KEYS[5]) or v1[4] or '0'
  entry = { v1[1] or '0', v1[2] or '0', v1[3] or '0', storage, v1[5], '0' }
  dirty = true
  redis.call('DEL', KEYS[4])
  redis.call('ZREM', KEYS[6], ARGV[10])
else
  local version = tonumber(ARGV[6])
  local storage = ARGV[5]
  local before = redis.call('HGET', KEYS[9], user)
  local kept = (before and string.match(before, '^%d+,%d+,%d+,(%d+),'))
    or redis.call('HGET', KEYS[7], user) or redis.call('HGET', KEYS[8], user) or redis.call('GET', KEYS[5])
  local flushed = version
  if kept and kept ~= storage then
    -- Newer than Postgres: dirty, one version past the row, so it is written.
    storage = kept
    version = version + 1
    dirty = true
  end
  entry = { ARGV[2], ARGV[3], ARGV[4], storage, fmt(version), fmt(flushed) }
end
if dirty then count = count + 1 end
redis.call('HSET', hash, user, table.concat(entry, ','), '#', count)
redis.call('HSET', KEYS[7], user, entry[4])
redis.call('EXPIRE', KEYS[7], ARGV[11], 'NX')
if is_new then redis.call('EXPIRE', hash, ARGV[7]) end
if dirty then redis.call('ZADD', KEYS[2], 'NX', ARGV[8], ARGV[9]) end
return 1
