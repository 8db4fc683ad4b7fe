-- ARGV: ttl, abandoned after (s), commits..., then (channel, known checkpoint id) pairs: the
--       caller holds that checkpoint's history of the channel, so only what follows it is sent.
-- Returns {state, fields}: state 0 = readable, 1 = staged change pending, 2 = only
-- abandoned staged changes. Fields 'i:<channel>' name the checkpoint a history extends.
local k = KEYS[1]
local at = commit(k, 3)
local f = redis.call('HGETALL', k)
if #f == 0 then return {0, f} end
redis.call('PEXPIRE', k, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
local now = tonumber(redis.call('TIME')[1])
local state = 0
local id = redis.call('HGET', k, 'id')
local since = {}
for i = at + 1, at + 2 * tonumber(ARGV[at]), 2 do
  local ch, known = ARGV[i], ARGV[i + 1]
  if id and redis.call('HGET', k, 'h:' .. ch) == id and (known == id
      or redis.call('HEXISTS', k, 'k:' .. ch .. '\0' .. known) == 1) then
    since[ch] = known
  end
end
local out = {}
for i = 1, #f, 2 do
  local name = f[i]
  local p = string.sub(name, 1, 2)
  local keep = p ~= 'k:'
  if p == 'p:' then
    if state == 0 then state = 2 end
    local at_time = tonumber(string.match(f[i + 1], '|(%d+)$')) or 0
    if now - at_time < tonumber(ARGV[2]) then state = 1 end
  elseif p == 's:' then
    keep = since[history_channel(name)] == nil
  elseif p == 'd:' then
    local known = since[history_channel(name)]
    keep = known == nil or delta_checkpoint(name) >= known
  end
  if keep then
    out[#out + 1] = name
    out[#out + 1] = f[i + 1]
  end
end
for ch, known in pairs(since) do
  out[#out + 1] = 'i:' .. ch
  out[#out + 1] = known
end
return {state, out}
