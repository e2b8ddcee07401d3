--[[
restore-key.lua: puts back an idempotent answer that Postgres kept after Redis lost it (the store
asks only after decide.lua answered status 7), so the retried decision replays it.

KEYS[1]  idempotency <p>{b}:i:<user>:<key>
KEYS[2]  key index   <p>{b}:ik:<user>     zset <key> -> ms it expires (the per-user bound)

ARGV[1]  the stored answer, as decide.lua wrote it
ARGV[2]  ms it has left to live (> 0)
ARGV[3]  the key as the caller named it (the index member)

Never overwrites: an answer already there (a concurrent decision stored or restored it) wins.
Returns 1 when restored, 0 when one was there.
]]

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then return 0 end
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]), ARGV[3])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1
