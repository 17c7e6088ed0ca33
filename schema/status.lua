-- status.lua — set fields of the mirror's status hash and say whether it existed before.
--
-- Guarantees (atomic): the fields are set, and the answer tells whether KEYS[1] existed just
-- before, with nothing in between. The mirror writes its status about every second from the
-- start of a run, so once it has written it, an absent hash means Redis lost the mirror's
-- keys (FLUSHALL, FLUSHDB, a restart without persistence, someone deleting them): the next
-- heartbeat notices, whatever the filter admits (the root's own keys may not exist at all).
--
-- A deposed leader's status write is refused by the fence (common.lua), so `leader` and
-- `fence` in the hash always name the newest leader.
--
-- With a token, the hash counts as existing only if its `fence` field is this writer's token
-- (every heartbeat of a leader writes it): a flush takes the fence keys too, so a deposed
-- leader's heartbeat can land afterwards and re-create the hash; the newer leader must still
-- see that Redis lost its keys. (The first write of a run, where the field names the previous
-- leader, is not judged by the mirror.)
--
-- KEYS: 1 status (HASH), 2 fence (of KEYS[1]'s hash slot)
-- ARGV: 1 fencing token (or empty: not fenced), then field, value, field, value, ...
-- Returns: 1 the hash existed before this write, 0 it did not; or the error reply `FENCED ...`

local refused = fence(KEYS[2], ARGV[1])
if refused then return refused end
local existed = redis.call('EXISTS', KEYS[1])
if existed == 1 and ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
  existed = 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return existed
