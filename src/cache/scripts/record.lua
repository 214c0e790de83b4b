-- Prelude of the bump run by `update` (see scripts.rs, RECORD): remember the versions this
-- write produced, so the change-feed function can tell them from other writers' changes.
-- KEYS[3] = own-writes sorted set; ARGV[2] = window in ms; ARGV[3..] = versions (_etag).
if #ARGV > 2 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- pcall: a Redis out of memory must still take the bump below.
  redis.pcall('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[2]))
  for i = 3, #ARGV do
    redis.pcall('ZADD', KEYS[3], now, ARGV[i])
  end
  redis.pcall('PEXPIRE', KEYS[3], ARGV[2])
end
