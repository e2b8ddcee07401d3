--[[
decide-entry.lua: the second part of decide.lua (see its header for the keys, arguments, entry
layout and reply): reading and writing a user's entry, releasing lapsed holds, threshold bits,
replays of stored answers, and the comparisons a decision makes.
]]

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
