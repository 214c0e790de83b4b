local m = 0
if moved then
  m = redis.call('EXISTS', KEYS[1])
  redis.pcall('SET', KEYS[1], ARGV[1])
  redis.pcall('SET', KEYS[2], server)
else
  redis.pcall('SET', KEYS[1], ARGV[1], 'NX')
end
local g = redis.pcall('INCR', KEYS[1])
if type(g) == 'table' and g.err then
  redis.call('DEL', KEYS[1])
  return {-1, m}
end
return {g, m}
