--[[
decide.lua: usage decisions of users of one bucket, each atomic and taken in order, in one call:
check | consume | increment | refund. The store (decide-protocol.ts builds the arguments and
reads the reply) sends the decisions of one event-loop turn that fall in the same bucket together
(up to 16 per call), so Redis runs one script, and reads TIME at most once, for all of them.

KEYS[1]  marks       <p>{b}:marks    zset "<day>:<shard>" -> ms of the first unflushed change
KEYS[2]  epoch       <p>{b}:epoch    ms when this bucket's state was (re)built
KEYS[3]  key outbox  <p>{b}:ipend    zset "<user>:<key>" -> ms stored: idempotent answers not yet
                                     copied to Postgres by the flusher
then, per decision, 4 or 6 keys:
         today       <p>{b}:u:<day>:<shard>        the user's shard hash of the decision's day:
                                                   "<user>" -> "d,a,c,s,v,f", "#" -> dirty users
         yesterday   <p>{b}:u:<day - 1>:<shard>    the same shard the day before
         gauges      <p>{b}:g:<shard>:<period>     "<user>" -> storage (micro-units) of the users
                                                   active in this period of GAUGE_PERIOD_DAYS
         last gauges <p>{b}:g:<shard>:<period - 1> the period before
         idempotency <p>{b}:i:<user>:<key>         only when the decision carries a key
         key index   <p>{b}:ik:<user>              zset <key> -> ms it expires: the user's live keys,
                                                   counted against slot 9; only with a key
  The day before and the gauges are read only when today has no entry for the user (its first
  decision of the day), in that order, until one has it.

A user's entry "d,a,c,s,v,f": deployments, api_calls, compute_hours (micro-units that day),
storage (the gauge as it stands that day), v (version, +1 per write), f (the version last written
to Postgres: the user-day is dirty while v > f). "#" counts the shard-day's dirty users; the shard-day
is marked in KEYS[1] while it is above 0.

ARGV[1]  number of decisions, then per decision one JSON array (one argument instead of a dozen:
         cheaper for the client to send, and cjson decodes it in C), followed, only when the
         decision has an idempotency key, by two more arguments: its context (day and tier,
         stored with the answer) and its fingerprint (refuses a key reused with other parameters).
  The array's items (those handed to Redis commands as they are — now, lifetimes, names — are
  strings; the deadline and the amounts are numbers, only compared):
  1   number of its keys (4, or 6 with an idempotency key)
  2   deadline in Redis-server ms (0 = none): past it nothing is applied, because the caller has
      already given up (timed out) and answered without this decision
  3   mode: check | consume | increment | refund
  4   now, ms (mark score)
  5   user id (the entry's field)
  6   lifetime of a new shard-day hash, seconds (until 2 days after the day ends, measured on the
      caller's clock, so an injected clock keeps keys alive)
  7   mark member "<day>:<shard>"
  8   idempotency TTL, seconds
  9   most idempotency keys one user may hold (0 = no bound): a decision that would store a new
      key while the user holds that many live ones is refused (status 6) and changes nothing;
      a replay of a held key is always answered
  10  1 when the store already looked the key up in Postgres (after a loss), else 0
  11  start of the day, ms
  12  lifetime of a new gauges hash, seconds (until a day after the next period ends)
  13  n, the number of metrics, followed by n triples:
      position in the entry (1-4), amount (micro-units; negative only to lower the storage gauge),
      limit (micro-units, -1 = unlimited)

Returns one flat array, the answers of the decisions in order:
  status, denied, cur_1..cur_n                      a decision taken now (status 0 or 1)
  status, denied                                    status 2, 3, 4, 5 or 7
  status, wait                                      status 6
  status + 10, denied, cur_1..cur_n, lim_1..lim_n, context
                                                    replayed from the idempotency key
  status 1 = allowed / applied, 0 = denied (nothing changed), 2 = state must be loaded from Postgres
  first (no entry and no gauge: Redis lost it, or the user was away longer than a period), 3 =
  deadline passed (nothing changed), 4 = idempotency key reused with other parameters, 5 = over the
  ceiling: a consume or increment that would be admitted would take a metric past MAX_TOTAL
  (nothing changed, nothing stored under the key; denied names the metric; a consume over a limit
  is denied, status 0, before the ceiling is looked at), 6 = the user holds as many idempotency
  keys as slot 9 allows (nothing changed; wait = ms until the oldest expires), 7 = the key is not
  in Redis but may be in Postgres: this bucket's state was rebuilt less than an idempotency TTL
  ago, so a key answered before the loss may have been lost with it; the store looks it up
  (restoring it when found) and sends the decision again with slot 10 = 1 (nothing changed).
  denied = index of the first denied metric (0 = none); cur = values after the call (before it
  when denied or checked). A fresh answer leaves out the limits and context the caller sent; a
  replay returns those of the first call.
The comparison is current + amount > limit *before* incrementing: a denial changes nothing.

Lost state: a user without an entry today starts the day from yesterday's entry, or else from
their gauge (a user away for a while), but only if this bucket's state (its epoch) predates the
day's start; otherwise, or with neither, Redis may have lost the user: status 2.

A decision on a user-day that has an entry costs two commands: HMGET (entry and "#") and HSET
(entry and "#"), plus HSET of the gauge when storage changes. The first write after a flush also
marks the shard-day (ZADD NX; a mark that went missing is put back by the store's sweep,
repair-marks.lua); a new shard-day hash gets its EXPIRE; a user's first write of a day also
writes the gauge (HSET, EXPIRE NX), which keeps an active user in the current period.

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
local NUM_KEYS, DEADLINE, MODE, NOW, USER, DAY_TTL, MARK, IDEM_TTL = 1, 2, 3, 4, 5, 6, 7, 8
local IDEM_CAP, KEY_CHECKED, DAY_START, GAUGE_TTL, METRIC_COUNT = 9, 10, 11, 12, 13

-- The ceiling of every total, micro-units: MAX_TOTAL_MICRO of src/metrics.ts (9e9 units), the
-- largest round total below 2^53 micro-units, where doubles stop being exact. The conformance
-- suite checks this boundary to the micro-unit.
local MAX_TOTAL = 9e15

-- Positions in an entry after the four counts.
local VERSION, FLUSHED = 5, 6

local marks_key, epoch_key, outbox_key = KEYS[1], KEYS[2], KEYS[3]

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

-- "d,a,c,s,v,f" as six numbers; `text` keeps the six as written, so a write formats only the
-- numbers it changes (string.format costs about as much as the HGET).
local function parse_entry(raw)
  local d, a, c, s, v, f = string.match(raw, '^(%d+),(%d+),(%d+),(%d+),(%d+),(%d+)$')
  return { tonumber(d), tonumber(a), tonumber(c), tonumber(s), tonumber(v), tonumber(f), text = { d, a, c, s, v, f } }
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

-- The metrics of a decision as parallel lists: position in the entry, amount, limit (-1 = unlimited).
local function metrics_of(args)
  local positions, amounts, limits = {}, {}, {}
  for i = 1, args[METRIC_COUNT] do
    local base = METRIC_COUNT + (i - 1) * 3
    positions[i], amounts[i], limits[i] = args[base + 1], args[base + 2], args[base + 3]
  end
  return positions, amounts, limits
end

-- The user's entry of the day and the hash's dirty count (nil: a new hash). A user without an
-- entry today starts the day from yesterday's entry (zero counts, its storage) or, away longer,
-- from the gauge; both only when this bucket's state predates the day (see the header). nil
-- entry: lost state, rebuilt from Postgres (status 2), never counted from 0.
local function read_entry(args, keys)
  local values = redis.call('HMGET', keys.today, args[USER], '#')
  local raw, dirty_count = values[1], values[2]
  if raw then return parse_entry(raw), dirty_count end
  local e = bucket_epoch()
  if not e or e > args[DAY_START] then return nil, dirty_count end
  local storage
  local before = redis.call('HGET', keys.yesterday, args[USER])
  if before then
    storage = parse_entry(before)[4]
  else
    storage = tonumber(redis.call('HGET', keys.gauges, args[USER]) or redis.call('HGET', keys.last_gauges, args[USER]) or '')
    if not storage then return nil, dirty_count end
  end
  return { 0, 0, 0, storage, 0, 0, text = { '0', '0', '0', fmt(storage), '0', '0' } }, dirty_count
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

-- Adds (or, for a refund, subtracts) every amount, bumps the version; a user-day that was clean
-- (v == f) becomes dirty: counted in "#" and its shard-day marked.
local function apply(args, positions, amounts, current, entry, dirty_count, keys)
  local sign = 1
  if args[MODE] == 'refund' then sign = -1 end
  local storage_changed = false
  local text = entry.text
  for i = 1, #positions do
    local v = current[i] + sign * amounts[i]
    if v < 0 then v = 0 end -- a refund or a storage decrement never goes below 0
    current[i] = v
    entry[positions[i]] = v
    text[positions[i]] = fmt(v)
    if positions[i] == 4 then storage_changed = true end
  end
  local first_of_day = entry[VERSION] == 0
  if storage_changed or first_of_day then
    redis.call('HSET', keys.gauges, args[USER], text[4])
    if first_of_day then redis.call('EXPIRE', keys.gauges, args[GAUGE_TTL], 'NX') end
  end
  local today_key = keys.today
  local was_clean = entry[VERSION] == entry[FLUSHED]
  entry[VERSION] = entry[VERSION] + 1
  local count = tonumber(dirty_count) or 0
  if was_clean then count = count + 1 end
  redis.call('HSET', today_key, args[USER],
    text[1] .. ',' .. text[2] .. ',' .. text[3] .. ',' .. text[4] .. ',' .. fmt(entry[VERSION]) .. ',' .. text[FLUSHED],
    '#', count)
  if not dirty_count then redis.call('EXPIRE', today_key, args[DAY_TTL]) end
  if was_clean then redis.call('ZADD', marks_key, 'NX', args[NOW], args[MARK]) end
end

-- One decision: appends its answer to `out`.
local function decide(args, keys, idem_key, index_key, context, fingerprint)
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

  local positions, amounts, limits = metrics_of(args)
  local entry, dirty_count = read_entry(args, keys)
  if not entry then
    answer(NEEDS_SEED, 0)
    return
  end
  if stores_key then
    -- Only in the first idempotency TTL after this bucket was rebuilt (or when its epoch is
    -- gone): a key missing now may have been answered before the loss. Never otherwise.
    local e = bucket_epoch()
    if args[KEY_CHECKED] == 0 and (not e or e > args[NOW] - args[IDEM_TTL] * 1000) then
      answer(NEEDS_KEY_LOOKUP, 0)
      return
    end
    if not key_room(args, index_key) then return end
  end

  local current = {}
  for i = 1, #positions do current[i] = entry[positions[i]] end
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
    apply(args, positions, amounts, current, entry, dirty_count, keys)
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
    redis.call('ZADD', outbox_key, 'NX', args[NOW], args[USER] .. ':' .. key)
  end
end

-- Decode every decision first (see the header), then decide them in order.
local decisions = {}
local arg_at, key_at = 2, 4
for d = 1, tonumber(ARGV[1]) do
  local args = cjson.decode(ARGV[arg_at])
  local keys = { today = KEYS[key_at], yesterday = KEYS[key_at + 1], gauges = KEYS[key_at + 2], last_gauges = KEYS[key_at + 3] }
  if args[NUM_KEYS] == 6 then
    decisions[d] = { args = args, keys = keys, idem_key = KEYS[key_at + 4], index_key = KEYS[key_at + 5],
                     context = ARGV[arg_at + 1], fingerprint = ARGV[arg_at + 2] }
    arg_at, key_at = arg_at + 3, key_at + 6
  else
    decisions[d] = { args = args, keys = keys, context = '', fingerprint = '' }
    arg_at, key_at = arg_at + 1, key_at + 4
  end
end
for _, d in ipairs(decisions) do
  decide(d.args, d.keys, d.idem_key, d.index_key, d.context, d.fingerprint)
end
return out
