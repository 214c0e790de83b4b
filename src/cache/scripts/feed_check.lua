-- Prelude of the bump run by the change-feed function (see scripts.rs, FEED): skip the bump
-- when every change of the batch is a version `update` recorded within the window (it bumped
-- the generation already), and forget those versions. Not when the server changed under the
-- generation (`moved`): the bump below must move it.
-- KEYS[3] = own-writes sorted set; ARGV[2] = window in ms; ARGV[3] = '1' when every change
-- carried a version, else '0'; ARGV[4..] = the versions.
if not moved and ARGV[3] == '1' and #ARGV > 3 then
  local t = redis.call('TIME')
  local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[2])
  local own = true
  for i = 4, #ARGV do
    local at = redis.call('ZSCORE', KEYS[3], ARGV[i])
    if not at or tonumber(at) < oldest then
      own = false
      break
    end
  end
  if own then
    for i = 4, #ARGV do
      redis.pcall('ZREM', KEYS[3], ARGV[i])
    end
    return {0, 0, 1}
  end
end
