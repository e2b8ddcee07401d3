--[[
apply.lua: one usage decision on one user's counters, atomically: check | consume | increment | refund.

KEYS[1]  day hash    <p>{b}:d:<user>:<day>   fields d a c s (micro-units), v (version)
KEYS[2]  gauge       <p>{b}:g:<user>         storage in micro-units, no expiry
KEYS[3]  dirty set   <p>{b}:dirty            zset "<user>:<day>" -> ms of first unflushed change
KEYS[4]  epoch       <p>{b}:epoch            ms when this bucket's state was (re)built
KEYS[5]  idempotency <p>{b}:i:<user>:<key>   optional: the stored result of the first call

ARGV[1]  mode: check | consume | increment | refund
ARGV[2]  deadline in Redis-server ms (0 = none): past it nothing is applied, because the caller has
         already given up (timed out) and answered without this decision
ARGV[3]  now, ms (dirty score)
ARGV[4]  start of the day, ms
ARGV[5]  lifetime of a new day hash, seconds (until 2 days after the day ends,
         measured on the caller's clock, so an injected clock keeps keys alive)
ARGV[6]  dirty member "<user>:<day>"
ARGV[7]  idempotency TTL, seconds
ARGV[8]  context: opaque word stored with an idempotent result (the tier)
ARGV[9]  fingerprint of the request, to refuse a key reused with other parameters
ARGV[10] n, the number of metrics, followed by n triples from ARGV[11]:
         field (d|a|c|s), amount (micro-units, > 0), limit (micro-units, -1 = unlimited)

Returns { status, denied, context, cur_1..cur_n, lim_1..lim_n }
  status 1 = allowed / applied, 0 = denied (nothing changed), 2 = state must be loaded from Postgres
  first (Redis lost it), 3 = deadline passed (nothing changed), 4 = idempotency key reused with
  other parameters; +10 when the answer is replayed from the idempotency key.
  denied = index of the first denied metric (0 = none); cur = values after the call (before it
  when denied or checked); lim = the limits the decision used.
The comparison is current + amount > limit *before* incrementing: a denial changes nothing.
]]

local function fmt(x) return string.format('%.0f', x) end

local mode = ARGV[1]
local deadline = tonumber(ARGV[2])
if deadline > 0 then
  local t = redis.call('TIME')
  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then return { 3, 0, '' } end
end

local idem = KEYS[5]
if idem then
  local stored = redis.call('GET', idem)
  if stored then
    local parts = {}
    for item in string.gmatch(stored, '[^,]+') do parts[#parts + 1] = item end
    -- stored: status, denied, fingerprint, context, cur..., lim...
    if parts[3] ~= ARGV[9] then return { 4, 0, '' } end
    local out = { tonumber(parts[1]) + 10, tonumber(parts[2]), parts[4] }
    for i = 5, #parts do out[#out + 1] = tonumber(parts[i]) end
    return out
  end
end

local day_key, gauge_key = KEYS[1], KEYS[2]
local n = tonumber(ARGV[10])
local fields, amounts, limits, cur = {}, {}, {}, {}
-- One HMGET reads the version and every daily field asked for. Every write sets `v`, so a
-- missing `v` means a missing day hash.
local wanted, needs_gauge = { 'v' }, false
for i = 1, n do
  local base = 10 + (i - 1) * 3
  fields[i] = ARGV[base + 1]
  amounts[i] = tonumber(ARGV[base + 2])
  limits[i] = tonumber(ARGV[base + 3])
  if fields[i] == 's' then needs_gauge = true else wanted[#wanted + 1] = fields[i] end
end
local values = redis.call('HMGET', day_key, unpack(wanted))
local version = values[1]
local exists = version ~= false

-- The gauge is read only when needed: for storage, or to start a new day hash. A missing day hash
-- is where lost state shows: every user touched since this Redis started has a gauge, and a
-- missing day is a fresh day only if this bucket's state predates the day's start.
local gauge = 0
if needs_gauge or not exists then
  local gauge_raw = redis.call('GET', gauge_key)
  if not gauge_raw then return { 2, 0, '' } end
  gauge = tonumber(gauge_raw)
  if not exists then
    local epoch = redis.call('GET', KEYS[4])
    if not epoch or tonumber(epoch) > tonumber(ARGV[4]) then return { 2, 0, '' } end
  end
end

local j = 2
for i = 1, n do
  if fields[i] == 's' then
    cur[i] = gauge
  else
    cur[i] = tonumber(values[j] or '0')
    j = j + 1
  end
end

local status, denied = 1, 0
if mode == 'check' or mode == 'consume' then
  for i = 1, n do
    if limits[i] >= 0 and cur[i] + amounts[i] > limits[i] then
      status, denied = 0, i
      break
    end
  end
end

if status == 1 and mode ~= 'check' then
  local sign = 1
  if mode == 'refund' then sign = -1 end
  local hset, has_s = {}, false
  for i = 1, n do
    local v = cur[i] + sign * amounts[i]
    if v < 0 then v = 0 end -- a refund or a storage decrement never goes below 0
    cur[i] = v
    if fields[i] == 's' then
      has_s = true
      redis.call('SET', gauge_key, fmt(v))
    end
    hset[#hset + 1] = fields[i]
    hset[#hset + 1] = fmt(v)
  end
  if not exists and not has_s then
    -- The day's row records the gauge as it stands that day.
    hset[#hset + 1] = 's'
    hset[#hset + 1] = fmt(gauge)
  end
  hset[#hset + 1] = 'v'
  hset[#hset + 1] = fmt((tonumber(version) or 0) + 1)
  redis.call('HSET', day_key, unpack(hset))
  if not exists then redis.call('EXPIRE', day_key, ARGV[5]) end
  redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[6])
end

local out = { status, denied, ARGV[8] }
for i = 1, n do out[#out + 1] = cur[i] end
for i = 1, n do out[#out + 1] = limits[i] end

if idem and (mode == 'consume' or mode == 'increment') then
  local parts = { status, denied, ARGV[9], ARGV[8] }
  for i = 1, n do parts[#parts + 1] = fmt(cur[i]) end
  for i = 1, n do parts[#parts + 1] = fmt(limits[i]) end
  redis.call('SET', idem, table.concat(parts, ','), 'EX', ARGV[7])
end

return out
