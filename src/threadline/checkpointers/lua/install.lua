-- ARGV: ttl, ns, id, parent ('' = full), expected gen ('' = any), head, token, commits...,
--       history channels..., snapshot channels..., then field/value pairs
local k = KEYS[1]
local at = commit(k, 8)
local hist, snaps
hist, at = channel_set(at)
snaps, at = channel_set(at)
local id = ARGV[3]
local floor = redis.call('HGET', k, 'floor')
if floor and id < floor then return 0 end
if ARGV[5] ~= '' and ARGV[5] ~= (redis.call('HGET', k, 'gen') or '0') then return 0 end
local cur = redis.call('HGET', k, 'id')
local partial = ARGV[4] ~= ''
if partial and cur ~= ARGV[4] and cur ~= id then return -1 end
local advancing = partial and cur ~= id
-- A history channel's history follows from the parent's: seeded from the parent's value
-- ('seed') or extended by the parent's writes ('extend'); otherwise it is unknown here.
-- The parent being a thread's first checkpoint ('up' empty), a channel it holds no value for
-- has an empty history there, which the parent's writes extend.
local mode = {}
if advancing then
  local root = redis.call('HGET', k, 'up') == ''
  for ch in pairs(hist) do
    if redis.call('HGET', k, 'n:' .. ch) == cur then mode[ch] = 'seed'
    elseif redis.call('HGET', k, 'h:' .. ch) == cur then mode[ch] = 'extend'
    elseif root and redis.call('HEXISTS', k, 'c:' .. ch) == 0 then mode[ch] = 'extend' end
  end
end
local stale = {}
local early = {}
for _, f in ipairs(redis.call('HKEYS', k)) do
  local p = string.sub(f, 1, 2)
  if p == 'w:' and cur ~= id then
    local ch = write_channel(f)
    if advancing and ch and mode[ch] then
      redis.call('HSET', k, 'd:' .. ch .. '\0' .. cur .. '\0' .. string.sub(f, 3),
        redis.call('HGET', k, f))
    end
    stale[#stale + 1] = f
  elseif (p == 'p:' and cur ~= id) or (p == 'c:' and not partial) then
    stale[#stale + 1] = f
  elseif p == 'e:' then
    local a = string.find(f, '\0', 3, true)
    local target = string.sub(f, 3, a - 1)
    if target == id then early[#early + 1] = f end
    if target <= id then stale[#stale + 1] = f end
  elseif HISTORY[p] and not (partial and cur == id) and mode[history_channel(f)] ~= 'extend' then
    stale[#stale + 1] = f
  end
end
for i, f in ipairs(early) do
  local a = string.find(f, '\0', 3, true)
  early[i] = {'w:' .. string.sub(f, a + 1), redis.call('HGET', k, f)}
end
if #stale > 0 then redis.call('HDEL', k, unpack(stale)) end
for _, w in ipairs(early) do redis.call('HSET', k, w[1], w[2]) end
for ch, m in pairs(mode) do
  local seed = m == 'seed' and redis.call('HGET', k, 'c:' .. ch)
  if seed then
    redis.call('HSET', k, 's:' .. ch, seed, 'h:' .. ch, id)
  elseif m == 'extend' then
    redis.call('HSET', k, 'k:' .. ch .. '\0' .. cur, '', 'h:' .. ch, id)
  end
end
for ch in pairs(snaps) do redis.call('HSET', k, 'n:' .. ch, id) end
redis.call('HSET', k, 'id', id, 'floor', id, 'cp', ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', k, 'p:' .. ARGV[7], id .. '|' .. redis.call('TIME')[1])
end
if #ARGV >= at then redis.call('HSET', k, unpack(ARGV, at)) end
redis.call('PEXPIRE', k, ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
