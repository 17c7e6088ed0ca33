-- put.lua — write one znode's data, Stat and children, atomically, never backwards.
--
-- Guarantees (one script = one atomic step in Redis):
--   * data, meta and children of the znode change together or not at all, so a reader that
--     reads them in one MULTI (or one script) never sees a torn pair;
--   * the stored version never goes backwards: the incoming read is ordered against the stored
--     one by the tuple (czxid, mzxid, pzxid, aversion). Within one incarnation each of these only
--     grows; a re-created znode has a higher czxid. An older read is refused;
--   * a deleted znode is never resurrected by a late write of an older read: a tombstone
--     (KEYS[4]) holds a zxid T such that every incarnation created at or before T is known dead;
--     a read whose czxid <= T is refused;
--   * an identical read writes nothing (reconcile rewrites only what differs); "identical"
--     includes the stored data bytes, every Stat field and the children set, so keys altered
--     by another writer are repaired by the next walk;
--   * every applied write appends one entry to the change stream (KEYS[5]) in the same step, so
--     a reader that sees the entry finds the change already in the keys. Behind a Redis Cluster
--     the stream lives in another slot than the znode, where no script may reach: there the
--     mirror sends an empty ARGV[14] (and KEYS[5] = KEYS[1], a key of this slot, never read),
--     the script appends nothing, and the mirror appends the entry itself once the script
--     answered 1 (see layout.md, "Behind Redis Cluster");
--   * a read held too long is never written: a tombstone lives only so long (its ttl), so a
--     read older than that could resurrect what it no longer remembers. The mirror sends the
--     deadline (when the read was sent + a bound below the tombstone ttl) and the script
--     judges it by Redis's own clock (TIME), where a pause of the mirror (GC, SIGSTOP, a VM
--     migration, a pipeline stuck in retransmission) cannot hide;
--   * histories first (ARGV[16], the mirror's `epoch`): a ZooKeeper restored from a backup
--     starts a new history whose zxids are below the stored ones. A stored version (meta
--     field `epoch`, a tombstone's `@E` suffix; absent = 0) of a lower history is replaced
--     whatever its zxids; a higher one refuses the write (answer 5). Zxids are compared only
--     within one history;
--   * a deposed leader never writes: the fence (common.lua) runs before anything else;
--   * all or nothing even when a key holds the wrong type: Redis does not undo a script's
--     writes when a later command fails, so everything that can fail runs before the first
--     write. The stream's type is checked up front (its XADD is the first write); a wrong-typed tomb,
--     meta or children key fails its read (GET, HMGET, SCARD) before any write (EXISTS, which
--     takes keys of any type, only spares these reads when none of the keys exists); the data
--     key is only read where it is checked, and SET replaces whatever it held.
--
-- KEYS: 1 data (STRING), 2 meta (HASH), 3 children (SET), 4 tombstone (STRING), 5 changes (STREAM),
--       6 fence (STRING, the fence key of KEYS[1]'s hash slot)
-- ARGV: 1 czxid, 2 mzxid, 3 pzxid, 4 ctime, 5 mtime, 6 version, 7 cversion, 8 aversion,
--       9 ephemeral_owner, 10 data_length, 11 num_children, 12 mirrored_at (unix ms),
--       13 path, 14 stream max length (approximate; empty: no stream entry, the cluster case), 15 read deadline (unix ms by Redis's own
--       clock, or empty for none), 16 history (`epoch`, decimal), 17 fencing token (or
--       empty: not fenced), then (from FIXED + 1 on) the data bytes and the child names
-- Returns: 0 unchanged, 1 written, 2 refused (older than stored), 3 refused (tombstoned),
--          4 refused (stale: Redis's clock is past the read deadline),
--          5 refused (a newer history is stored);
--          the error reply `FENCED ...` (common.lua) or, when a key holds the wrong type, an
--          error reply naming it; with nothing written

-- The fixed arguments end here; data and children follow. New fixed arguments go just above
-- FIXED (and FIXED grows), so data and children always sit after them.
local FIXED = 17
local DATA = FIXED + 1

local refused = fence(KEYS[6], ARGV[17])
if refused then return refused end

local stream = ARGV[14] ~= ''
if stream then
  local unusable = stream_unusable(KEYS[5], ARGV[13], 'written')
  if unusable then return unusable end
end

if past_deadline(ARGV[15]) then
  return 4
end

local czxid, mzxid, pzxid, aversion = ARGV[1], ARGV[2], ARGV[3], ARGV[8]
local epoch = tonumber(ARGV[16]) or 0

-- A znode Redis holds nothing of (no tombstone, meta or children key: a cold sync) has nothing
-- to compare and no key of the wrong type: one EXISTS instead of GET, HGET, HMGET and a DEL.
local absent = redis.call('EXISTS', KEYS[4], KEYS[2], KEYS[3]) == 0

local FIELDS = {'czxid', 'mzxid', 'pzxid', 'ctime', 'mtime', 'version', 'cversion', 'aversion',
  'ephemeral_owner', 'data_length', 'num_children', 'epoch'}
local stored, stored_epoch = {}, 0
if not absent then
  local tomb = redis.call('GET', KEYS[4])
  if tomb then
    local tomb_zxid, tomb_epoch = tomb_parts(tomb)
    if tomb_epoch > epoch then return 5 end
    -- A tombstone of an older history says nothing about this one's znodes.
    if tomb_epoch == epoch and cmp(czxid, tomb_zxid) <= 0 then
      return 3
    end
  end
  -- FIELDS[12] is the history, read with the Stat (one HMGET).
  stored = redis.call('HMGET', KEYS[2], unpack(FIELDS))
  stored_epoch = tonumber(stored[12] or '0') or 0
  if stored_epoch > epoch then return 5 end
end
local children_fresh = false
if stored[1] and stored_epoch == epoch then
  -- stored[i] is field FIELDS[i]: 1 czxid, 2 mzxid, 3 pzxid, 8 aversion
  local order = cmp(czxid, stored[1])
  if order == 0 then order = cmp(mzxid, stored[2] or '') end
  if order == 0 then order = cmp(pzxid, stored[3] or '') end
  if order == 0 then order = cmp(aversion, stored[8] or '') end
  if order < 0 then
    return 2
  end
  local children = #ARGV - DATA
  children_fresh = stored[1] == czxid and stored[3] == pzxid
    and redis.call('SCARD', KEYS[3]) == children
  if children_fresh and children > 0 then
    -- Same size; make sure it is the same set (someone else may have written it).
    for i = DATA + 1, #ARGV do
      if redis.call('SISMEMBER', KEYS[3], ARGV[i]) == 0 then
        children_fresh = false
        break
      end
    end
  end
  if order == 0 and children_fresh then
    -- The same version: unchanged unless a key was altered behind the mirror's back.
    local same = redis.call('GET', KEYS[1]) == ARGV[DATA]
    for i = 1, 11 do
      if stored[i] ~= ARGV[i] then same = false end
    end
    if same then
      return 0
    end
  end
end

-- The stream entry first: a command refused by Redis's ACLs (the one most likely missing is
-- XADD) aborts the script, and Redis undoes nothing written before, so the first write is the
-- one that must fail, if any. Inside the script the order is invisible to readers.
if stream then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[14], '*',
    'op', 'put', 'path', ARGV[13], 'mzxid', mzxid, 'version', ARGV[6], 'czxid', czxid)
end
redis.call('SET', KEYS[1], ARGV[DATA])
redis.call('HSET', KEYS[2],
  'czxid', czxid, 'mzxid', mzxid, 'pzxid', pzxid, 'ctime', ARGV[4], 'mtime', ARGV[5],
  'version', ARGV[6], 'cversion', ARGV[7], 'aversion', aversion,
  'ephemeral_owner', ARGV[9], 'data_length', ARGV[10], 'num_children', ARGV[11],
  'mirrored_at', ARGV[12], 'epoch', epoch)
if not children_fresh then
  if not absent then redis.call('DEL', KEYS[3]) end
  -- SADD in chunks: unpack() of tens of thousands of values overflows Lua's C stack.
  local i = DATA + 1
  while i <= #ARGV do
    local last = math.min(i + 4999, #ARGV)
    redis.call('SADD', KEYS[3], unpack(ARGV, i, last))
    i = last + 1
  end
end
return 1
