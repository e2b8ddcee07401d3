--[[
decide.lua: usage decisions of users of one bucket, each atomic and taken in order, in one call:
check | consume | increment | refund. The store (decide-protocol.ts builds the arguments and
reads the reply) sends the decisions of one event-loop turn that fall in the same bucket together
(up to 16 per call), so Redis runs one script, and reads TIME at most once, for all of them.

KEYS[1]  marks       <p>{b}:marks    zset "<day>:<shard>" -> ms of the first unflushed change
KEYS[2]  epoch       <p>{b}:epoch    ms when this bucket's state was (re)built
KEYS[3]  key outbox  <p>{b}:ipend    zset "<user>:<key>" -> ms stored: idempotent answers not yet
                                     copied to Postgres by the flusher
KEYS[4]  crossings   <p>{b}:cross    zset "<user>|<day>|<metric 0-2>|<80|100>|<value>|<limit>" -> ms:
                                     threshold crossings not yet copied to Postgres by the flusher
then, per decision, 5 or 7 keys:
         today       <p>{b}:u:<day>:<shard>        the user's shard hash of the decision's day:
                                                   "<user>" -> "d,a,c,s,v,f", "#" -> dirty users
         yesterday   <p>{b}:u:<day - 1>:<shard>    the same shard the day before
         gauges      <p>{b}:g:<shard>:<period>     "<user>" -> storage (micro-units) of the users
                                                   active in this period of GAUGE_PERIOD_DAYS
         last gauges <p>{b}:g:<shard>:<period - 1> the period before
         holds       <p>{b}:h:<day>:<user>         the user's reservations of the day: "<id>" ->
                                                   "o,<position>,<amount>,<expires ms>" while open,
                                                   "c,<answer>" committed, "x,<answer>" cancelled;
                                                   read only by reserve, commit, cancel, and when a
                                                   hold has lapsed
         idempotency <p>{b}:i:<user>:<key>         only when the decision carries a key
         key index   <p>{b}:ik:<user>              zset <key> -> ms it expires: the user's live keys,
                                                   counted against slot 9; only with a key
  The day before and the gauges are read only when today has no entry for the user (its first
  decision of the day), in that order, until one has it.

A user's entry "d,a,c,s,v,f" + optional ",t" or ",t,h1,h2,h3,x": deployments, api_calls, compute_hours (micro-units
that day), storage (the gauge as it stands that day), v (version, +1 per write), f (the version
last written to Postgres: the user-day is dirty while v > f); then, only when not all 0, t (bits of
the thresholds reached: 2(p-1) for 80 % and 2(p-1)+1 for 100 % of daily position p), h1-h3 (held
by open reservations per daily metric) and x (ms the earliest open hold lapses, 0 = none). "#" counts the shard-day's dirty users; the shard-day
is marked in KEYS[1] while it is above 0.

ARGV[1]  number of decisions, then per decision one JSON array (one argument instead of a dozen:
         cheaper for the client to send, and cjson decodes it in C), followed, only when the
         decision has an idempotency key, by two more arguments: its context (day and tier,
         stored with the answer) and its fingerprint (refuses a key reused with other parameters).
  The array's items (those handed to Redis commands as they are — now, lifetimes, names — are
  strings; the deadline and the amounts are numbers, only compared):
  1   number of its keys (5, or 7 with an idempotency key)
  2   deadline in Redis-server ms (0 = none): past it nothing is applied, because the caller has
      already given up (timed out) and answered without this decision
  3   mode: check | consume | increment | refund | reserve | commit | cancel
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
  after them, for reserve, commit and cancel (one daily metric): the reservation id, and for a
      reserve the ms its hold lapses

Returns one flat array, the answers of the decisions in order:
  status, denied, cur_1..cur_n                      a decision taken now (status 0 or 1)
  status + 20, denied, cur_1..cur_n, held_1..held_n the same, when the day holds reservations
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
  keys as slot 9 allows (nothing changed; wait = ms until the oldest expires), 8 = no such open
  reservation (commit, cancel), 9 = the reservation was settled the other way, 7 = the key is not
  in Redis but may be in Postgres: this bucket's state was rebuilt less than an idempotency TTL
  ago, so a key answered before the loss may have been lost with it; the store looks it up
  (restoring it when found) and sends the decision again with slot 10 = 1 (nothing changed).
  denied = index of the first denied metric (0 = none; commit and cancel: the amount the
  reservation held); cur = values after the call (before it when denied or checked). A fresh answer leaves out the limits and context the caller sent; a
  replay returns those of the first call.
The comparison is current + held + amount > limit *before* incrementing (check, consume, reserve): a
denial changes nothing, and a hold counts against the limit while it lasts.

Reservations: reserve holds the amount (h, x and the holds hash; no version change: holds are not
usage, the flusher never sees them); commit releases the hold and adds the actual amount as an
increment does; cancel releases it. A second commit (cancel) replays the first answer, kept in the
holds hash. A lapsed hold is released, and its record deleted, by the first decision of the user
that day after x (no sweeper): until then it counts nowhere, since every reader releases first.

Threshold crossings: a decision that changes a daily metric with a limit adds a crossing to KEYS[4]
for each threshold the new value reaches when its bit was clear or the value before was under it
(a changed limit moves the threshold), setting the bit; it clears the bits of thresholds it is
under again (a refund, a raised limit, a reset), so they can be crossed again (thresholds.ts).

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

local marks_key, epoch_key, outbox_key, crossings_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local NOT_FOUND, CONFLICT, HAS_HELD = 8, 9, 20

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

-- "d,a,c,s,v,f" (+ ",t" or ",t,h1,h2,h3,x") as eleven numbers (the rest 0 when left out); `text` keeps the
-- first six as written, so a write formats only the numbers it changes (string.format costs about
-- as much as the HGET).
local function parse_entry(raw)
  local d, a, c, s, v, f, rest = string.match(raw, '^(%d+),(%d+),(%d+),(%d+),(%d+),(%d+)(.*)$')
  local entry = { tonumber(d), tonumber(a), tonumber(c), tonumber(s), tonumber(v), tonumber(f), 0, 0, 0, 0, 0, text = { d, a, c, s, v, f } }
  if rest ~= '' then
    local i = 7
    for n in string.gmatch(rest, '%d+') do
      entry[i] = tonumber(n)
      i = i + 1
    end
  end
  return entry
end

-- The entry's text: the six as kept in `text`, then t, holds and x only when they are not all 0.
local function entry_text(entry)
  local text = entry.text
  local out = text[1] .. ',' .. text[2] .. ',' .. text[3] .. ',' .. text[4] .. ',' .. text[5] .. ',' .. text[6]
  if entry[8] > 0 or entry[9] > 0 or entry[10] > 0 or entry[11] > 0 then
    return out .. ',' .. fmt(entry[7]) .. ',' .. fmt(entry[8]) .. ',' .. fmt(entry[9]) .. ',' .. fmt(entry[10]) .. ',' .. fmt(entry[11])
  elseif entry[7] > 0 then
    return out .. ',' .. fmt(entry[7])
  end
  return out
end

-- Writes the entry as it is (no version change: holds and threshold bits are not usage). A new
-- hash gets its dirty count and lifetime.
local function write_entry(args, keys, entry, dirty_count)
  redis.call('HSET', keys.today, args[USER], entry_text(entry), '#', tonumber(dirty_count) or 0)
  if not dirty_count then redis.call('EXPIRE', keys.today, args[DAY_TTL]) end
end

-- Releases the holds lapsed by `now` (deleting their records) and sets x to the next one. Returns
-- whether anything changed (the entry must then be written).
local function release_lapsed(args, keys, entry)
  local due = entry[11]
  local now = tonumber(args[NOW])
  if due == 0 or due > now then return false end
  local flat = redis.call('HGETALL', keys.holds)
  local next_due = 0
  for j = 1, #flat, 2 do
    local position, amount, expires = string.match(flat[j + 1], '^o,(%d+),(%d+),(%d+)$')
    if position then
      expires = tonumber(expires)
      if expires <= now then
        local slot = 7 + tonumber(position)
        entry[slot] = math.max(0, entry[slot] - tonumber(amount))
        redis.call('HDEL', keys.holds, flat[j])
      elseif next_due == 0 or expires < next_due then
        next_due = expires
      end
    end
  end
  entry[11] = next_due
  return true
end

-- Held on the entry for each metric of the decision (0 for the gauge).
local function held_of(entry, positions)
  local held, any = {}, false
  for i = 1, #positions do
    local h = 0
    if positions[i] <= 3 then h = entry[7 + positions[i]] end
    held[i] = h
    if h > 0 then any = true end
  end
  return held, any
end

local function reaches(value, limit, k)
  if k == 0 then return value * 5 >= limit * 4 end
  return value >= limit
end

-- Sets and clears the threshold bits of daily position p, which went from `before` to `value`
-- (see the header): a threshold reached with its bit clear, or from under it, adds the crossing
-- to KEYS[4].
local function update_crossed(args, entry, p, before, value, limit)
  for k = 0, 1 do
    local b = bit.lshift(1, 2 * (p - 1) + k)
    local reached = reaches(value, limit, k)
    local set = bit.band(entry[7], b) ~= 0
    if reached and (not set or not reaches(before, limit, k)) then
      if not set then entry[7] = entry[7] + b end
      local percent = '80'
      if k == 1 then percent = '100' end
      redis.call('ZADD', crossings_key, 'NX', args[NOW], args[USER] .. '|' .. string.sub(args[MARK], 1, 10) .. '|'
        .. (p - 1) .. '|' .. percent .. '|' .. fmt(value) .. '|' .. fmt(limit))
    elseif set and not reached then
      entry[7] = entry[7] - b
    end
  end
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
  return { 0, 0, 0, storage, 0, 0, 0, 0, 0, 0, 0, text = { '0', '0', '0', fmt(storage), '0', '0' } }, dirty_count
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

-- Index of the first metric that would pass its limit, counting what is held (0 = none).
-- Compared before anything is added: a denial changes nothing.
local function first_denied(current, held, amounts, limits)
  for i = 1, #current do
    if limits[i] >= 0 and current[i] + held[i] + amounts[i] > limits[i] then return i end
  end
  return 0
end

-- Adds (or, for a refund, subtracts) every amount, bumps the version; a user-day that was clean
-- (v == f) becomes dirty: counted in "#" and its shard-day marked. Daily metrics with a limit
-- update their threshold bits (update_crossed).
local function apply(args, positions, amounts, limits, current, entry, dirty_count, keys)
  local sign = 1
  if args[MODE] == 'refund' then sign = -1 end
  local storage_changed = false
  local text = entry.text
  for i = 1, #positions do
    local current_before = current[i]
    local v = current_before + sign * amounts[i]
    if v < 0 then v = 0 end -- a refund or a storage decrement never goes below 0
    current[i] = v
    entry[positions[i]] = v
    text[positions[i]] = fmt(v)
    if positions[i] == 4 then
      storage_changed = true
    elseif limits[i] >= 0 then
      update_crossed(args, entry, positions[i], current_before, v, limits[i])
    end
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
  text[VERSION] = fmt(entry[VERSION])
  redis.call('HSET', today_key, args[USER], entry_text(entry), '#', count)
  if not dirty_count then redis.call('EXPIRE', today_key, args[DAY_TTL]) end
  if was_clean then redis.call('ZADD', marks_key, 'NX', args[NOW], args[MARK]) end
end

-- Appends a fresh answer: status, denied, the values, and what is held when anything is.
local function answer_values(status, denied, current, entry, positions)
  local held, any = held_of(entry, positions)
  if any then status = status + HAS_HELD end
  answer(status, denied)
  for i = 1, #current do out[#out + 1] = current[i] end
  if any then for i = 1, #held do out[#out + 1] = held[i] end end
end

local function kind_of(mode)
  if mode == 'commit' then return 'c' end
  return 'x'
end

-- A commit or cancel of the reservation named after the metrics (see the header). The entry's
-- lapsed holds are released already.
local function settle(args, keys, positions, amounts, limits, entry, dirty_count, hold_id)
  local mode = args[MODE]
  local record = redis.call('HGET', keys.holds, hold_id)
  local kind = record and string.sub(record, 1, 1)
  local position, held, expires
  if kind == 'o' then
    position, held, expires = string.match(record, '^o,(%d+),(%d+),(%d+)$')
    position, held, expires = tonumber(position), tonumber(held), tonumber(expires)
  end
  if not kind or (kind == 'o' and (position ~= positions[1] or expires <= tonumber(args[NOW]))) then
    if entry.released then write_entry(args, keys, entry, dirty_count) end
    answer(NOT_FOUND, 0)
    return
  end
  if kind ~= 'o' then
    if entry.released then write_entry(args, keys, entry, dirty_count) end
    if (kind == 'c') == (mode == 'commit') then
      replay(record, kind, 1)
    else
      answer(CONFLICT, 0)
    end
    return
  end
  local current = { entry[position] }
  if mode == 'commit' and amounts[1] > 0 and current[1] + amounts[1] > MAX_TOTAL then
    if entry.released then write_entry(args, keys, entry, dirty_count) end
    answer(TOO_LARGE, 1)
    return
  end
  entry[7 + position] = math.max(0, entry[7 + position] - held)
  if mode == 'commit' then
    -- Added as an increment adds (no comparison: the work happened).
    args[MODE] = 'increment'
    apply(args, positions, amounts, limits, current, entry, dirty_count, keys)
    args[MODE] = mode
  else
    write_entry(args, keys, entry, dirty_count)
  end
  -- Kept for a repeat, in the stored-answer layout; in place of a context, the amount recorded
  -- and what stayed held of the metric.
  redis.call('HSET', keys.holds, hold_id, kind_of(mode) .. ',1,' .. fmt(held) .. ',' .. fmt(current[1]) .. ',' .. fmt(limits[1])
    .. ',' .. fmt(amounts[1]) .. ';' .. fmt(entry[7 + position]))
  answer_values(ALLOWED, held, current, entry, positions)
end

-- One decision: appends its answer to `out`.
local function decide(args, keys, idem_key, index_key, context, fingerprint, hold_id, hold_expires)
  local deadline, mode = args[DEADLINE], args[MODE]
  if deadline > 0 and server_now() > deadline then
    answer(DEADLINE_PASSED, 0)
    return
  end
  -- Consume, increment and reserve store their answer under the key (commit and cancel are
  -- idempotent by their reservation).
  local stores_key = idem_key and (mode == 'consume' or mode == 'increment' or mode == 'reserve')
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
    if mode == 'commit' or mode == 'cancel' then
      -- No entry that day: a reservation would have made one (or Redis lost both).
      local e = bucket_epoch()
      if e and e <= args[DAY_START] then
        answer(NOT_FOUND, 0)
        return
      end
    end
    answer(NEEDS_SEED, 0)
    return
  end
  entry.released = release_lapsed(args, keys, entry)
  if mode == 'commit' or mode == 'cancel' then
    settle(args, keys, positions, amounts, limits, entry, dirty_count, hold_id)
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
  local held = held_of(entry, positions)
  local status, denied = ALLOWED, 0
  if mode == 'check' or mode == 'consume' or mode == 'reserve' then
    denied = first_denied(current, held, amounts, limits)
    if denied > 0 then status = DENIED end
  end
  -- Past its limit is an ordinary denial; the ceiling refuses only what would be admitted.
  if status == ALLOWED and (mode == 'consume' or mode == 'increment' or mode == 'reserve') then
    local sums = current
    if mode == 'reserve' then sums = { current[1] + held[1] } end
    local over = first_too_large(sums, amounts)
    if over > 0 then
      if entry.released then write_entry(args, keys, entry, dirty_count) end
      answer(TOO_LARGE, over)
      return
    end
  end
  if status == ALLOWED and mode == 'reserve' then
    local slot = 7 + positions[1]
    entry[slot] = entry[slot] + amounts[1]
    if entry[11] == 0 or hold_expires < entry[11] then entry[11] = hold_expires end
    write_entry(args, keys, entry, dirty_count)
    redis.call('HSET', keys.holds, hold_id, 'o,' .. positions[1] .. ',' .. fmt(amounts[1]) .. ',' .. fmt(hold_expires))
    redis.call('EXPIRE', keys.holds, args[DAY_TTL])
  elseif status == ALLOWED and mode ~= 'check' then
    apply(args, positions, amounts, limits, current, entry, dirty_count, keys)
  elseif entry.released then
    write_entry(args, keys, entry, dirty_count)
  end

  answer_values(status, denied, current, entry, positions)

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
local arg_at, key_at = 2, 5
for d = 1, tonumber(ARGV[1]) do
  local args = cjson.decode(ARGV[arg_at])
  local keys = { today = KEYS[key_at], yesterday = KEYS[key_at + 1], gauges = KEYS[key_at + 2], last_gauges = KEYS[key_at + 3],
                 holds = KEYS[key_at + 4] }
  local decision = { args = args, keys = keys, context = '', fingerprint = '' }
  local after = METRIC_COUNT + 3 * args[METRIC_COUNT]
  decision.hold_id, decision.hold_expires = args[after + 1], args[after + 2]
  if args[NUM_KEYS] == 7 then
    decision.idem_key, decision.index_key = KEYS[key_at + 5], KEYS[key_at + 6]
    decision.context, decision.fingerprint = ARGV[arg_at + 1], ARGV[arg_at + 2]
    arg_at, key_at = arg_at + 3, key_at + 7
  else
    arg_at, key_at = arg_at + 1, key_at + 5
  end
  decisions[d] = decision
end
for _, d in ipairs(decisions) do
  decide(d.args, d.keys, d.idem_key, d.index_key, d.context, d.fingerprint, d.hold_id, d.hold_expires)
end
return out
