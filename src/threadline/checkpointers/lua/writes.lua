-- ARGV: ttl, id, upsert, token, commits..., then field/value pairs
local k = KEYS[1]
local first = commit(k, 5)
local cur = redis.call('HGET', k, 'id')
local set = ARGV[3] == '1' and 'HSET' or 'HSETNX'
if cur and cur > ARGV[2] then
  -- Late writes to an older checkpoint. Those to the entry's parent join the histories
  -- built from it; any other history built without them is incomplete.
  local to_parent = redis.call('HGET', k, 'up') == ARGV[2]
  for i = first, #ARGV, 2 do
    local ch = write_channel(ARGV[i])
    if ch and to_parent and redis.call('HGET', k, 'h:' .. ch) == cur then
      redis.call(set, k, 'd:' .. ch .. '\0' .. ARGV[2] .. '\0' .. string.sub(ARGV[i], 3),
        ARGV[i + 1])
    elseif ch then
      redis.call('HDEL', k, 'h:' .. ch)
    end
  end
  return 0
end
redis.call('HSET', k, 'p:' .. ARGV[4], ARGV[2] .. '|' .. redis.call('TIME')[1])
if cur ~= ARGV[2] then
  -- Early writes: their checkpoint's install is still on its way; it adopts them.
  for i = first, #ARGV, 2 do
    redis.call(set, k, 'e:' .. ARGV[2] .. '\0' .. string.sub(ARGV[i], 3), ARGV[i + 1])
  end
else
  for i = first, #ARGV, 2 do redis.call(set, k, ARGV[i], ARGV[i + 1]) end
end
redis.call('PEXPIRE', k, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
