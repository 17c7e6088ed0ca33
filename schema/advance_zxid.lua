-- advance_zxid.lua — raise the status hash's `zxid` field, never lower it.
--
-- Guarantees (atomic): `zxid` in KEYS[1] only grows, even with two mirrors writing it, so a
-- reader can use it as "everything up to this zxid is in the keys".
--
-- Histories: ARGV[2] is the mirror's history (`epoch`, see put.lua; empty = 0), kept in the
-- hash's `epoch` field (absent = 0). A claim of a newer history replaces the stored `zxid`
-- even when lower (ZooKeeper went back: the watermark restarts in the new history, once);
-- a claim of an older history writes nothing. Within one history `zxid` only grows.
--
-- KEYS: 1 status (HASH), 2 fence (of KEYS[1]'s hash slot)
-- ARGV: 1 candidate zxid (decimal), 2 history (`epoch`, decimal), 3 fencing token (or empty:
--       not fenced)
-- Returns: the stored zxid after the call, or nil (nothing written) when the hash does not
--          exist; or the error reply `FENCED ...` (common.lua)

local refused = fence(KEYS[2], ARGV[3])
if refused then return refused end

-- A status hash that is gone was flushed (or deleted) since the mirror wrote it: creating it
-- here would hide that from the next heartbeat's loss check (status.lua), and claim a zxid for
-- keys Redis no longer holds. Answer nil instead; the mirror resyncs.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
-- With a token, a hash whose `fence` field is not this writer's was re-created by someone else
-- since the flush (a deposed leader, whose heartbeat the lost fence no longer stops; see
-- status.lua): the same loss.
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[3] then
  return false
end

local current = redis.call('HGET', KEYS[1], 'zxid')
local epoch = tonumber(ARGV[2] or '') or 0
local stored_epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') or 0
if stored_epoch > epoch then
  return current
end
if stored_epoch == epoch and current and cmp(current, ARGV[1]) >= 0 then
  return current
end
redis.call('HSET', KEYS[1], 'zxid', ARGV[1], 'epoch', epoch)
return ARGV[1]
