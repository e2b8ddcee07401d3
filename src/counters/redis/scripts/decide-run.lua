--[[
decide-run.lua: the last part of decide.lua (see its header): settling a reservation, one decision,
and the call's loop that decodes every decision first, then decides them in order.
]]

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
