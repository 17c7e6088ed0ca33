-- status.lua — set fields of the mirror's status hash and say whether it existed before.
--
-- Guarantees (atomic): the fields are set, and the answer tells whether KEYS[1] existed just
-- before, with nothing in between. The mirror writes its status about every second from the
-- start of a run, so once it has written it, an absent hash means Redis lost the mirror's
-- keys (FLUSHALL, FLUSHDB, a restart without persistence, someone deleting them): the next
-- heartbeat notices, whatever the filter admits (the root's own keys may not exist at all).
--
-- KEYS: 1 status (HASH)
-- ARGV: field, value, field, value, ...
-- Returns: 1 the hash existed before this write, 0 it did not

local existed = redis.call('EXISTS', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return existed
