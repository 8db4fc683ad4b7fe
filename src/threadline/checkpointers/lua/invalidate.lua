-- ARGV: ttl, ns, below ('' = whatever the entry holds), reset floor ('1'), new gen
local k = KEYS[1]
local below = ARGV[3]
local cur = redis.call('HGET', k, 'id')
if below ~= '' and cur and cur > below then return 0 end
local floor = redis.call('HGET', k, 'floor')
if ARGV[4] == '1' then floor = false end
if below ~= '' and ((not floor) or below > floor) then floor = below end
redis.call('DEL', k)
redis.call('HSET', k, 'gen', ARGV[5])
if floor then redis.call('HSET', k, 'floor', floor) end
redis.call('PEXPIRE', k, ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
