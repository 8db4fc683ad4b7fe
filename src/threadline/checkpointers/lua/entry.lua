-- Shared by every hot-tier script (prepended by hot_protocol.Scripts).
-- Field names are documented in hot_protocol.py, which builds every KEYS/ARGV list.
local function commit(k, at)
  local n = tonumber(ARGV[at])
  for i = at + 1, at + n do redis.call('HDEL', k, 'p:' .. ARGV[i]) end
  return at + n + 1
end

local HISTORY = {['h:'] = true, ['s:'] = true, ['d:'] = true, ['k:'] = true, ['n:'] = true}
local function channel_set(at)
  local set = {}
  local n = tonumber(ARGV[at])
  for i = at + 1, at + n do set[ARGV[i]] = true end
  return set, at + n + 1
end
local function write_channel(f)
  local a = string.find(f, '\0', 3, true)
  local b = a and string.find(f, '\0', a + 1, true)
  return b and string.sub(f, b + 1)
end
local function history_channel(f)
  local a = string.find(f, '\0', 3, true)
  return string.sub(f, 3, a and a - 1)
end
local function delta_checkpoint(f)
  local a = string.find(f, '\0', 3, true)
  local b = string.find(f, '\0', a + 1, true)
  return string.sub(f, a + 1, b - 1)
end
