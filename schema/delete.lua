-- delete.lua — remove one znode's keys, leaving a short-lived tombstone.
--
-- Guarantees (atomic):
--   * data, meta and children disappear together;
--   * a newer incarnation is never deleted: if the stored czxid is above the tombstone zxid T,
--     the stored znode was created after the read that saw the path absent, so it is left alone;
--   * the tombstone (KEYS[4]) records T, the highest zxid at which every incarnation created so
--     far is known to be dead (see layout.md), and only ever grows; it expires after ARGV[2] ms,
--     long after any read that could still be in flight;
--   * an applied delete appends one `del` entry to the change stream in the same step; with an
--     empty ARGV[4] (behind a Redis Cluster, where the stream is in another slot; KEYS[5] is
--     then KEYS[1]) it appends nothing and answers {1, mzxid, version, tombstone zxid} of the
--     deleted version instead of 1, for the mirror to append the entry itself.
--   * mode `hide` (the mirror lost READ permission) removes the keys without a tombstone: the
--     znode still exists, and a later readable read must be accepted. It is ordered like a
--     put: ARGV[8..11] are the znode's (czxid, mzxid, pzxid, aversion) when it was found
--     unreadable, and a hide older than the stored read is refused, so a stale NoAuth
--     cannot remove a znode already written from a newer readable read (opening an ACL bumps
--     aversion). An equal tuple hides: the same state, readable to one identity and not to
--     this one, stays out;
--   * mode `exclude` (the filter leaves the path out) removes the keys without a tombstone
--     and without comparing: it follows from the configuration, not from a read;
--   * histories first (ARGV[7], the mirror's `epoch`; see put.lua): a stored version of an
--     older history is deleted or hidden whatever its zxids (its zxids mean nothing in this
--     history), a tombstone of an older history is replaced; a stored version or tombstone of
--     a newer history refuses the delete or hide (answer 5). The tombstone is written `T` in
--     history 0 and `T@E` in history E >= 1;
--   * a deposed leader never deletes: the fence (common.lua) runs before anything else;
--   * all or nothing even when a key holds the wrong type: the stream's type and the
--     tombstone ttl are checked up front, a wrong-typed meta or tombstone fails its read
--     before any write, and DEL removes keys of any type.
--
-- KEYS: 1 data, 2 meta, 3 children, 4 tombstone, 5 changes, 6 fence (of KEYS[1]'s hash slot)
-- ARGV: 1 tombstone zxid T (decimal, may be empty: then the stored czxid is used),
--       2 tombstone ttl ms, 3 path, 4 stream max length (empty: no stream entry, answer the
--       deleted version instead), 5 mode (`delete`, `hide`, `exclude`),
--       6 read deadline (unix ms by Redis's clock, or empty for none; see put.lua),
--       7 history (`epoch`, decimal; empty = 0),
--       8..11 czxid, mzxid, pzxid, aversion of the unreadable znode (mode `hide`; empty
--       otherwise), 12 fencing token (or empty: not fenced)
-- Returns: 0 nothing was stored, 1 deleted, 2 refused (a newer incarnation is stored),
--          3 refused (mode `hide`: the stored read is newer), 4 refused (stale read),
--          5 refused (a newer history is stored);
--          the error reply `FENCED ...` (common.lua) or, when a key holds the wrong type, an
--          error reply naming it; with nothing written

local refused = fence(KEYS[6], ARGV[12])
if refused then return refused end

local stream = ARGV[4] ~= ''
if stream then
  local unusable = stream_unusable(KEYS[5], ARGV[3], 'deleted')
  if unusable then return unusable end
end
if ARGV[5] == 'delete' and (tonumber(ARGV[2]) or 0) < 1 then
  return redis.error_reply('ERR tombstone ttl ' .. ARGV[2] .. ' ms is below 1 ms: nothing deleted for ' ..
    ARGV[3] .. '; raise --tombstone-ttl')
end

if past_deadline(ARGV[6]) then
  return 4
end

local stored = redis.call('HMGET', KEYS[2], 'czxid', 'mzxid', 'version', 'pzxid', 'aversion', 'epoch')
local epoch = tonumber(ARGV[7] or '') or 0
local stored_epoch = tonumber(stored[6] or '0') or 0
local old_tomb = redis.call('GET', KEYS[4])
local old_zxid, old_epoch = nil, 0
if old_tomb then old_zxid, old_epoch = tomb_parts(old_tomb) end
if ARGV[5] ~= 'exclude' and (stored_epoch > epoch or old_epoch > epoch) then
  return 5
end
-- Zxids of a stored version are only compared within this history.
local same_history = stored[1] and stored_epoch == epoch
local t = ARGV[1]
if ARGV[5] == 'hide' and same_history then
  local order = cmp(ARGV[8], stored[1])
  if order == 0 then order = cmp(ARGV[9], stored[2] or '') end
  if order == 0 then order = cmp(ARGV[10], stored[4] or '') end
  if order == 0 then order = cmp(ARGV[11], stored[5] or '') end
  if order < 0 then
    return 3
  end
end
local tomb_value = nil
if ARGV[5] == 'delete' then
  if t == '' and same_history then t = stored[1] end
  if same_history and t ~= '' and cmp(stored[1], t) > 0 then
    return 2
  end
  if t ~= '' then
    if old_tomb and old_epoch == epoch and cmp(old_zxid, t) > 0 then t = old_zxid end
    tomb_value = t
    if epoch > 0 then tomb_value = t .. '@' .. epoch end
  end
end

-- The stream entry before any write: a command refused by Redis's ACLs (XADD, most likely)
-- aborts the script, and Redis undoes nothing written before it (see put.lua). An entry is
-- written only when there is something to delete.
local present = redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) > 0
if present and stream then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*',
    'op', 'del', 'path', ARGV[3], 'mzxid', stored[2] or '', 'version', stored[3] or '',
    'zxid', t, 'reason', ARGV[5] == 'delete' and 'delete' or 'hide')
end
if tomb_value then
  redis.call('SET', KEYS[4], tomb_value, 'PX', ARGV[2])
end
if not present then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
if not stream then
  return {1, stored[2] or '', stored[3] or '', t}
end
return 1
