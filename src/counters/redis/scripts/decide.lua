--[[
decide.lua: usage decisions of users of one bucket, each atomic and taken in order, in one call:
(one script in three files, sent as one: this one — the protocol and the call's shared state —,
decide-entry.lua — a user's entry, its holds and threshold bits — and decide-run.lua — one
decision, and the call's loop; scripts.ts joins them in that order)
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
