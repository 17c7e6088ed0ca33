-- append.lua — one change-stream entry, fenced: behind a Redis Cluster only.
--
-- There the stream (P:changes) lies in another hash slot than the znode a script changed, so
-- put.lua and delete.lua append nothing and the mirror appends each entry after the znode's
-- script answered. The append must be fenced like every other write: a deposed leader whose
-- append was held (a paused process, a stalled socket) would otherwise add its old entry after
-- the new leader's newer one, and the stream would show the path going back. The fence key is
-- that of the stream's own slot, checked atomically with the XADD.
--
-- KEYS: 1 changes (STREAM), 2 fence (STRING, the fence key of KEYS[1]'s hash slot)
-- ARGV: 1 fencing token (or empty: not fenced), 2 stream max length (approximate),
--       then the entry's field, value pairs
-- Returns: the entry's id; or the error reply `FENCED ...` (common.lua), with nothing appended

local refused = fence(KEYS[2], ARGV[1])
if refused then return refused end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
