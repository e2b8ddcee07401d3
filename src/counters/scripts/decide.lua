--[[
decide.lua: usage decisions of users of one bucket, each atomic and taken in order, in one call:
check | consume | increment | refund. The store sends the decisions of one event-loop turn that
fall in the same bucket together (up to 16 per call), so Redis runs one script, and reads TIME at
most once, for all the decisions of a call.

KEYS[1]  dirty set   <p>{b}:dirty    zset "<user>:<day>" -> ms of first unflushed change
KEYS[2]  epoch       <p>{b}:epoch    ms when this bucket's state was (re)built
then, per decision, 2 or 3 keys:
         day hash    <p>{b}:d:<user>:<day>   fields d a c s (micro-units), v (version)
         gauge       <p>{b}:g:<user>         storage in micro-units, no expiry
         idempotency <p>{b}:i:<user>:<key>   only when the decision carries a key

ARGV[1]  number of decisions, then per decision one JSON array (one argument instead of a dozen:
         cheaper for the client to send, and cjson decodes it in C), followed, only when the
         decision has an idempotency key, by two more arguments: its context (day and tier,
         stored with the answer) and its fingerprint (refuses a key reused with other parameters).
  The array's items (those handed to Redis commands as they are — now, lifetimes, member — are
  strings; the deadline and day start are numbers, only compared):
  1   number of its keys (2, or 3 with an idempotency key)
  2   deadline in Redis-server ms (0 = none): past it nothing is applied, because the caller has
      already given up (timed out) and answered without this decision
  3   mode: check | consume | increment | refund
  4   now, ms (dirty score)
  5   start of the day, ms
  6   lifetime of a new day hash, seconds (until 2 days after the day ends, measured on the
      caller's clock, so an injected clock keeps keys alive)
  7   dirty member "<user>:<day>"
  8   idempotency TTL, seconds
  9   n, the number of metrics, followed by n triples:
      field (d|a|c|s), amount (micro-units; negative only to lower the storage gauge), limit (micro-units, -1 = unlimited)

Returns one flat array, the answers of the decisions in order:
  status, denied, cur_1..cur_n                      a decision taken now (status 0 or 1)
  status, denied                                    status 2, 3 or 4
  status + 10, denied, cur_1..cur_n, lim_1..lim_n, context
                                                    replayed from the idempotency key
  status 1 = allowed / applied, 0 = denied (nothing changed), 2 = state must be loaded from Postgres
  first (Redis lost it), 3 = deadline passed (nothing changed), 4 = idempotency key reused with
  other parameters. denied = index of the first denied metric (0 = none); cur = values after the
  call (before it when denied or checked). A fresh answer leaves out the limits and context the
  caller sent; a replay returns those of the first call.
The comparison is current + amount > limit *before* incrementing: a denial changes nothing.

Every write marks the user-day dirty with ZADD NX, also when it is marked already: a mark that went
missing (a dirty set deleted or evicted, another release's flusher) comes back with the next change.

All arguments are decoded before the first decision runs, so malformed input fails the call before
anything is written. A Redis error inside a decision (none is expected: the store validates what
it sends) would fail the whole call although the decisions before it were applied.
]]

local function fmt(x) return string.format('%.0f', x) end

local dirty_key, epoch_key = KEYS[1], KEYS[2]

-- Read at most once per call: every decision of the call shares them.
local server_ms
local function server_now()
  if not server_ms then
    local t = redis.call('TIME')
    server_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return server_ms
end
local epoch_read, epoch
local function bucket_epoch()
  if not epoch_read then
    epoch = tonumber(redis.call('GET', epoch_key) or '')
    epoch_read = true
  end
  return epoch
end

local out = {}

-- One decision: its items w, its keys day_key, gauge_key, idem; appends its answer to `out`.
local function decide(w, day_key, gauge_key, idem, context, fingerprint)
  local deadline = w[2]
  local mode = w[3]
  local n = w[9]
  if deadline > 0 and server_now() > deadline then
    out[#out + 1] = 3; out[#out + 1] = 0
    return
  end

  if idem then
    local stored = redis.call('GET', idem)
    if stored then
      -- stored: "fingerprint,status,denied,cur..,lim..,context" (the context may hold commas)
      local at = string.find(stored, ',', 1, true)
      if string.sub(stored, 1, at - 1) ~= fingerprint then
        out[#out + 1] = 4; out[#out + 1] = 0
        return
      end
      for i = 1, 2 + 2 * n do
        local next_at = string.find(stored, ',', at + 1, true)
        local value = tonumber(string.sub(stored, at + 1, next_at - 1))
        if i == 1 then value = value + 10 end
        out[#out + 1] = value
        at = next_at
      end
      out[#out + 1] = string.sub(stored, at + 1)
      return
    end
  end

  local fields, amounts, limits, cur = {}, {}, {}, {}
  -- One HMGET reads the version and every daily field asked for. Every write sets `v`, so a
  -- missing `v` means a missing day hash.
  local wanted, needs_gauge = { 'v' }, false
  for i = 1, n do
    local base = 9 + (i - 1) * 3
    fields[i] = w[base + 1]
    amounts[i] = w[base + 2]
    limits[i] = w[base + 3]
    if fields[i] == 's' then needs_gauge = true else wanted[#wanted + 1] = fields[i] end
  end
  local values = redis.call('HMGET', day_key, unpack(wanted))
  local version = values[1]
  local exists = version ~= false

  -- The gauge is read only when needed: for storage, or to start a new day hash. A missing day
  -- hash is where lost state shows: every user touched since this Redis started has a gauge, and
  -- a missing day is a fresh day only if this bucket's state predates the day's start.
  local gauge = 0
  if needs_gauge or not exists then
    local gauge_raw = redis.call('GET', gauge_key)
    local lost = not gauge_raw
    if not lost and not exists then
      local e = bucket_epoch()
      lost = not e or e > w[5]
    end
    if lost then
      out[#out + 1] = 2; out[#out + 1] = 0
      return
    end
    gauge = tonumber(gauge_raw)
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
    if not exists then redis.call('EXPIRE', day_key, w[6]) end
    redis.call('ZADD', dirty_key, 'NX', w[4], w[7])
  end

  out[#out + 1] = status
  out[#out + 1] = denied
  for i = 1, n do out[#out + 1] = cur[i] end

  if idem and (mode == 'consume' or mode == 'increment') then
    local parts = { fingerprint, status, denied }
    for i = 1, n do parts[#parts + 1] = fmt(cur[i]) end
    for i = 1, n do parts[#parts + 1] = fmt(limits[i]) end
    parts[#parts + 1] = context
    redis.call('SET', idem, table.concat(parts, ','), 'EX', w[8])
  end
end

-- Decode every decision first (see the header), then decide them in order.
local decisions = {}
local a, k = 2, 3
for d = 1, tonumber(ARGV[1]) do
  local w = cjson.decode(ARGV[a])
  if w[1] == 3 then
    decisions[d] = { w, KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[a + 1], ARGV[a + 2] }
    a, k = a + 3, k + 3
  else
    decisions[d] = { w, KEYS[k], KEYS[k + 1], nil, '', '' }
    a, k = a + 1, k + 2
  end
end
for d = 1, #decisions do
  local x = decisions[d]
  decide(x[1], x[2], x[3], x[4], x[5], x[6])
end
return out
