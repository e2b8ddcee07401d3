--[[
decide.lua: usage decisions of users of one bucket, each atomic and taken in order, in one call:
check | consume | increment | refund. The store (decide-protocol.ts builds the arguments and
reads the reply) sends the decisions of one event-loop turn that
fall in the same bucket together (up to 16 per call), so Redis runs one script, and reads TIME at
most once, for all the decisions of a call.

KEYS[1]  dirty set   <p>{b}:dirty    zset "<user>:<day>" -> ms of first unflushed change
KEYS[2]  epoch       <p>{b}:epoch    ms when this bucket's state was (re)built
KEYS[3]  key outbox  <p>{b}:ipend    zset "<user>:<key>" -> ms stored: idempotent answers not yet
                                     copied to Postgres by the flusher
then, per decision, 2 or 4 keys:
         day hash    <p>{b}:d:<user>:<day>   fields d a c s (micro-units), v (version)
         gauge       <p>{b}:g:<user>         storage in micro-units; expires after slot 10's
                                             seconds without a write (then rebuilt like lost state)
         idempotency <p>{b}:i:<user>:<key>   only when the decision carries a key
         key index   <p>{b}:ik:<user>        zset <key> -> ms it expires: the user's live keys,
                                             counted against slot 9; only with a key

ARGV[1]  number of decisions, then per decision one JSON array (one argument instead of a dozen:
         cheaper for the client to send, and cjson decodes it in C), followed, only when the
         decision has an idempotency key, by two more arguments: its context (day and tier,
         stored with the answer) and its fingerprint (refuses a key reused with other parameters).
  The array's items (those handed to Redis commands as they are — now, lifetimes, member — are
  strings; the deadline and day start are numbers, only compared):
  1   number of its keys (2, or 4 with an idempotency key)
  2   deadline in Redis-server ms (0 = none): past it nothing is applied, because the caller has
      already given up (timed out) and answered without this decision
  3   mode: check | consume | increment | refund
  4   now, ms (dirty score)
  5   start of the day, ms
  6   lifetime of a new day hash, seconds (until 2 days after the day ends, measured on the
      caller's clock, so an injected clock keeps keys alive)
  7   dirty member "<user>:<day>"
  8   idempotency TTL, seconds
  9   most idempotency keys one user may hold (0 = no bound): a decision that would store a new
      key while the user holds that many live ones is refused (status 6) and changes nothing;
      a replay of a held key is always answered
  10  lifetime of the gauge, seconds, renewed by every write to it and by every new day hash
  11  1 when the store already looked the key up in Postgres (after a loss), else 0
  12  n, the number of metrics, followed by n triples:
      field (d|a|c|s), amount (micro-units; negative only to lower the storage gauge), limit (micro-units, -1 = unlimited)

Returns one flat array, the answers of the decisions in order:
  status, denied, cur_1..cur_n                      a decision taken now (status 0 or 1)
  status, denied                                    status 2, 3, 4, 5 or 7
  status, wait                                      status 6
  status + 10, denied, cur_1..cur_n, lim_1..lim_n, context
                                                    replayed from the idempotency key
  status 1 = allowed / applied, 0 = denied (nothing changed), 2 = state must be loaded from Postgres
  first (Redis lost it), 3 = deadline passed (nothing changed), 4 = idempotency key reused with
  other parameters, 5 = over the ceiling: a consume or increment that would be admitted would take a
  metric past MAX_TOTAL (nothing changed, nothing stored under the key; denied names the metric;
  a consume over a limit is denied, status 0, before the ceiling is looked at), 6 = the user
  holds as many idempotency keys as slot 9 allows (nothing changed; wait = ms until the oldest
  expires), 7 = the key is not in Redis but may be in Postgres: this bucket's state was rebuilt
  less than an idempotency TTL ago, so a key answered before the loss may have been lost with it;
  the store looks it up (restoring it when found) and sends the decision again with slot 11 = 1
  (nothing changed). denied = index of the first denied metric (0 = none); cur = values after the
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

-- Reply status codes (decide-protocol.ts names the same numbers).
local DENIED, ALLOWED, NEEDS_SEED, DEADLINE_PASSED, KEY_REUSED, TOO_LARGE, TOO_MANY_KEYS = 0, 1, 2, 3, 4, 5, 6
local NEEDS_KEY_LOOKUP = 7
local REPLAYED = 10

-- Slots of a decision's JSON array (see the header).
local NUM_KEYS, DEADLINE, MODE, NOW, DAY_START, DAY_TTL, DIRTY_MEMBER, IDEM_TTL = 1, 2, 3, 4, 5, 6, 7, 8
local IDEM_CAP, GAUGE_TTL, KEY_CHECKED, METRIC_COUNT = 9, 10, 11, 12

-- The ceiling of every total, micro-units: MAX_TOTAL_MICRO of src/metrics.ts (9e9 units), the
-- largest round total below 2^53 micro-units, where doubles stop being exact. The conformance
-- suite checks this boundary to the micro-unit.
local MAX_TOTAL = 9e15

local dirty_key, epoch_key, outbox_key = KEYS[1], KEYS[2], KEYS[3]

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
local function answer(status, denied)
  out[#out + 1] = status
  out[#out + 1] = denied
end

-- An earlier answer stored under the idempotency key: "fingerprint,status,denied,cur..,lim..,context"
-- (the context may hold commas). Appends it as a replay, or KEY_REUSED for other parameters.
local function replay(stored, fingerprint, metric_count)
  local at = string.find(stored, ',', 1, true)
  if string.sub(stored, 1, at - 1) ~= fingerprint then
    answer(KEY_REUSED, 0)
    return
  end
  for i = 1, 2 + 2 * metric_count do
    local next_at = string.find(stored, ',', at + 1, true)
    local value = tonumber(string.sub(stored, at + 1, next_at - 1))
    if i == 1 then value = value + REPLAYED end
    out[#out + 1] = value
    at = next_at
  end
  out[#out + 1] = string.sub(stored, at + 1)
end

-- The metrics of a decision as parallel lists: hash field, amount, limit (-1 = unlimited).
local function metrics_of(args)
  local fields, amounts, limits = {}, {}, {}
  for i = 1, args[METRIC_COUNT] do
    local base = METRIC_COUNT + (i - 1) * 3
    fields[i], amounts[i], limits[i] = args[base + 1], args[base + 2], args[base + 3]
  end
  return fields, amounts, limits
end

-- Current values of the decision's metrics, the day hash's version (false: no day hash) and the
-- gauge; nil when this user's state was lost and must be seeded first.
-- One HMGET reads the version and every daily field asked for. Every write sets `v`, so a
-- missing `v` means a missing day hash. The gauge is read only when needed: for storage, or to
-- start a new day hash. A missing day hash is where lost state shows: every user touched since
-- this Redis started has a gauge, and a missing day is a fresh day only if this bucket's state
-- predates the day's start.
local function read_current(args, fields, day_key, gauge_key)
  local wanted, needs_gauge = { 'v' }, false
  for i = 1, #fields do
    if fields[i] == 's' then needs_gauge = true else wanted[#wanted + 1] = fields[i] end
  end
  local values = redis.call('HMGET', day_key, unpack(wanted))
  local version = values[1]
  local gauge = 0
  if needs_gauge or not version then
    local gauge_raw = redis.call('GET', gauge_key)
    local lost = not gauge_raw
    if not lost and not version then
      local e = bucket_epoch()
      lost = not e or e > args[DAY_START]
    end
    if lost then return nil end
    gauge = tonumber(gauge_raw)
  end
  local current, j = {}, 2
  for i = 1, #fields do
    if fields[i] == 's' then
      current[i] = gauge
    else
      current[i] = tonumber(values[j] or '0')
      j = j + 1
    end
  end
  return current, version, gauge
end

-- Index of the first metric an addition would take past MAX_TOTAL (0 = none). current is at most
-- MAX_TOTAL and an amount at most 1e15, so the sum is exact or rounds past 2^53: still over.
local function first_too_large(current, amounts)
  for i = 1, #current do
    if amounts[i] > 0 and current[i] + amounts[i] > MAX_TOTAL then return i end
  end
  return 0
end

-- Whether the user may store one more idempotency key: drops the expired ones from the index
-- (exact: each member carries its key's expiry, on the same Redis clock as the key's EX), then
-- compares the live ones with the bound. Appends the refusal and returns false when full.
local function key_room(args, index_key)
  local now_ms = server_now()
  redis.call('ZREMRANGEBYSCORE', index_key, '-inf', now_ms)
  local cap = args[IDEM_CAP]
  if cap <= 0 or redis.call('ZCARD', index_key) < cap then return true end
  local oldest = redis.call('ZRANGE', index_key, 0, 0, 'WITHSCORES')
  answer(TOO_MANY_KEYS, math.max(1, (tonumber(oldest[2]) or now_ms) - now_ms))
  return false
end

-- Index of the first metric that would pass its limit (0 = none). Compared before anything is
-- added: a denial changes nothing.
local function first_denied(current, amounts, limits)
  for i = 1, #current do
    if limits[i] >= 0 and current[i] + amounts[i] > limits[i] then return i end
  end
  return 0
end

-- Adds (or, for a refund, subtracts) every amount, bumps the version, marks the user-day dirty.
local function apply(args, fields, amounts, current, version, gauge, day_key, gauge_key)
  local sign = 1
  if args[MODE] == 'refund' then sign = -1 end
  local hset, has_storage = {}, false
  for i = 1, #fields do
    local v = current[i] + sign * amounts[i]
    if v < 0 then v = 0 end -- a refund or a storage decrement never goes below 0
    current[i] = v
    if fields[i] == 's' then
      has_storage = true
      redis.call('SET', gauge_key, fmt(v), 'EX', args[GAUGE_TTL])
    end
    hset[#hset + 1] = fields[i]
    hset[#hset + 1] = fmt(v)
  end
  if not version and not has_storage then
    -- The day's row records the gauge as it stands that day. The user is active: keep the gauge.
    hset[#hset + 1] = 's'
    hset[#hset + 1] = fmt(gauge)
    redis.call('EXPIRE', gauge_key, args[GAUGE_TTL])
  end
  hset[#hset + 1] = 'v'
  hset[#hset + 1] = fmt((tonumber(version) or 0) + 1)
  redis.call('HSET', day_key, unpack(hset))
  if not version then redis.call('EXPIRE', day_key, args[DAY_TTL]) end
  -- Also when marked already: a mark that went missing comes back with the next change.
  redis.call('ZADD', dirty_key, 'NX', args[NOW], args[DIRTY_MEMBER])
end

-- One decision: appends its answer to `out`.
local function decide(args, day_key, gauge_key, idem_key, index_key, context, fingerprint)
  local deadline, mode = args[DEADLINE], args[MODE]
  if deadline > 0 and server_now() > deadline then
    answer(DEADLINE_PASSED, 0)
    return
  end
  -- Only consume and increment store their answer under the key.
  local stores_key = idem_key and (mode == 'consume' or mode == 'increment')
  if idem_key then
    local stored = redis.call('GET', idem_key)
    if stored then
      replay(stored, fingerprint, args[METRIC_COUNT])
      return
    end
  end

  local fields, amounts, limits = metrics_of(args)
  local current, version, gauge = read_current(args, fields, day_key, gauge_key)
  if not current then
    answer(NEEDS_SEED, 0)
    return
  end
  if stores_key then
    -- Only in the first idempotency TTL after this bucket was rebuilt (read_current made sure it
    -- has an epoch): a key missing now may have been answered before the loss. Never otherwise.
    if args[KEY_CHECKED] == 0 and bucket_epoch() > args[NOW] - args[IDEM_TTL] * 1000 then
      answer(NEEDS_KEY_LOOKUP, 0)
      return
    end
    if not key_room(args, index_key) then return end
  end

  local status, denied = ALLOWED, 0
  if mode == 'check' or mode == 'consume' then
    denied = first_denied(current, amounts, limits)
    if denied > 0 then status = DENIED end
  end
  -- Past its limit is an ordinary denial; the ceiling refuses only what would be admitted.
  if status == ALLOWED and (mode == 'consume' or mode == 'increment') then
    local over = first_too_large(current, amounts)
    if over > 0 then
      answer(TOO_LARGE, over)
      return
    end
  end
  if status == ALLOWED and mode ~= 'check' then
    apply(args, fields, amounts, current, version, gauge, day_key, gauge_key)
  end

  answer(status, denied)
  for i = 1, #current do out[#out + 1] = current[i] end

  if stores_key then
    local parts = { fingerprint, status, denied }
    for i = 1, #current do parts[#parts + 1] = fmt(current[i]) end
    for i = 1, #current do parts[#parts + 1] = fmt(limits[i]) end
    parts[#parts + 1] = context
    redis.call('SET', idem_key, table.concat(parts, ','), 'EX', args[IDEM_TTL])
    -- The index member is the key as the caller named it: the idempotency key's name after
    -- "<p>{b}:i:<user>:", which is exactly as long as the index's name "<p>{b}:ik:<user>".
    local key = string.sub(idem_key, #index_key + 1)
    redis.call('ZADD', index_key, server_now() + args[IDEM_TTL] * 1000, key)
    redis.call('PEXPIRE', index_key, args[IDEM_TTL] * 1000)
    -- For the flusher, which copies the answer to Postgres: it outlives a Redis that loses it.
    -- The user id is the first 36 characters of the dirty member (a UUID).
    redis.call('ZADD', outbox_key, 'NX', args[NOW], string.sub(args[DIRTY_MEMBER], 1, 36) .. ':' .. key)
  end
end

-- Decode every decision first (see the header), then decide them in order.
local decisions = {}
local arg_at, key_at = 2, 4
for d = 1, tonumber(ARGV[1]) do
  local args = cjson.decode(ARGV[arg_at])
  if args[NUM_KEYS] == 4 then
    decisions[d] = { args = args, day_key = KEYS[key_at], gauge_key = KEYS[key_at + 1], idem_key = KEYS[key_at + 2],
                     index_key = KEYS[key_at + 3], context = ARGV[arg_at + 1], fingerprint = ARGV[arg_at + 2] }
    arg_at, key_at = arg_at + 3, key_at + 4
  else
    decisions[d] = { args = args, day_key = KEYS[key_at], gauge_key = KEYS[key_at + 1], context = '', fingerprint = '' }
    arg_at, key_at = arg_at + 1, key_at + 2
  end
end
for _, d in ipairs(decisions) do
  decide(d.args, d.day_key, d.gauge_key, d.idem_key, d.index_key, d.context, d.fingerprint)
end
return out
