local g = redis.call('GET', KEYS[1])
local m = 0
if moved then
  if g then m = 1 end
  g = ARGV[1]
  redis.call('SET', KEYS[1], g)
  redis.call('SET', KEYS[2], server)
elseif not g then
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
  g = redis.call('GET', KEYS[1])
end
local key = ARGV[2] .. g .. ':' .. ARGV[3]
local v = redis.call('GET', key)
-- The page's remaining time to live (ms, -1 = none), as a string: never read as a lease.
if v then return {g, v, tostring(redis.call('PTTL', key))} end
if tonumber(ARGV[4]) == 0 then return {g, '', 2, m} end
if redis.call('SET', key .. ':lease', ARGV[5], 'NX', 'PX', ARGV[4]) then return {g, '', 1, m} end
return {g, '', 0, m}
