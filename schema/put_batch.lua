-- put_batch.lua — put.lua for several znodes in one call: each znode is judged and written
-- exactly as put.lua would, in the order given, as if each were its own script; only the
-- cost is shared. One Redis (or a Sentinel primary) only: the keys of different paths lie in
-- different hash slots, so a Redis Cluster gets put.lua, one znode per call.
--
-- Why: in a cold sync put.lua's Redis time was about 13 us per znode, 4.5 times the plain
-- commands' (SET, HSET, SADD): most of it the script call and redis.call's own cost per
-- command (INFO commandstats). Here the call is shared, the stream's type and Redis's clock
-- are read once per call (the call is one atomic step, so a check made at its start holds for
-- every znode in it), and when Redis holds none of the batch's znodes (no tombstone, meta or
-- children key: a cold sync) one EXISTS answers for all of them, with nothing to compare;
-- otherwise each znode is judged on its own, as put.lua does. (No MSET: the mirror's ACL user,
-- schema/redis-acl.conf, has the commands put.lua uses and no others.)
--
-- Guarantees: those of put.lua, per znode (never backwards, never resurrect, identical reads
-- write nothing, one stream entry per applied write, the read deadline, histories first, the
-- fence), and all or nothing per znode: a znode whose key holds the wrong type is answered an
-- error naming the key, with nothing of it written, and the others go on. Everything that can
-- fail for one znode is read with redis.pcall before its first write; its writes (SET, HSET of
-- a hash or nothing, DEL, SADD into a fresh set, XADD to a stream checked up front) cannot fail
-- on its keys. An error that concerns Redis itself (OOM at the first write, say) fails the call.
--
-- KEYS: 1 changes (STREAM), then five per znode, in order: data, meta, children, tombstone,
--       fence (the fence key of the data key's hash slot)
-- ARGV: 1 mirrored_at (unix ms), 2 stream max length (approximate), 3 read deadline (unix ms
--       by Redis's clock, or empty), 4 history (`epoch`), 5 fencing token (or empty), then per
--       znode: the number of its children N, czxid, mzxid, pzxid, ctime, mtime, version,
--       cversion, aversion, ephemeral_owner, data_length, num_children, path, data, then the N
--       child names
-- Returns: an array, one element per znode: put.lua's answer (0 unchanged, 1 written,
--          2 older, 3 tombstoned, 4 stale, 5 newer history), or an error (`FENCED ...`,
--          `WRONGTYPE <key> ...`) for that znode, with nothing of it written

local FIELDS = {'czxid', 'mzxid', 'pzxid', 'ctime', 'mtime', 'version', 'cversion', 'aversion',
  'ephemeral_owner', 'data_length', 'num_children', 'epoch'}
local NFIELDS = 11
local now_ms, maxlen, token = ARGV[1], ARGV[2], ARGV[5]
local epoch = tonumber(ARGV[4]) or 0
local changes = KEYS[1]

-- Once per call (see above): the stream's type and Redis's clock.
local stream_kind = redis.call('TYPE', changes)['ok']
local stream_bad = stream_kind ~= 'stream' and stream_kind ~= 'none'
local stale = past_deadline(ARGV[3])

-- The fence each slot holds, as this call has seen or raised it.
local fences = {}

-- An error naming the key, from a redis.pcall error.
local function failed(key, reply)
  local text = reply['err'] or tostring(reply)
  local code, rest = string.match(text, '^(%u+) (.*)$')
  if code then return {err = code .. ' ' .. key .. ': ' .. rest} end
  return {err = text .. ' (' .. key .. ')'}
end

-- The fence (common.lua's, with what this call has seen of each slot kept): an error reply
-- for a znode whose slot has seen a newer token, else nil (and the slot raised to ours).
local function fence_one(fence_key)
  if token == '' then return nil end
  local seen = fences[fence_key]
  if seen == nil then
    local got = redis.pcall('GET', fence_key)
    if type(got) == 'table' and got['err'] then return failed(fence_key, got) end
    seen = got
  end
  if seen and cmp(seen, token) > 0 then
    return {err = 'FENCED ' .. seen .. ' ' .. fence_key ..
      ': a newer leader writes here; this writer (token ' .. token .. ') must step down'}
  end
  if seen ~= token then redis.call('SET', fence_key, token) end
  fences[fence_key] = token
  return nil
end

-- The writes of one znode put.lua makes once it decided to write: none of them can fail on
-- the znode's keys (see above). `children`: 'keep' (the stored set is the read's), 'replace'
-- (DEL, then SADD), 'add' (SADD alone: the key is known absent).
local function write(data_key, meta_key, children_key, s, path, data, first_child, last_child, children)
  local czxid, mzxid = ARGV[s], ARGV[s + 1]
  -- The entry first: a refused XADD (Redis's ACLs) aborts before this znode's keys change (see
  -- put.lua); the order inside the script is invisible to readers.
  redis.call('XADD', changes, 'MAXLEN', '~', maxlen, '*',
    'op', 'put', 'path', path, 'mzxid', mzxid, 'version', ARGV[s + 5], 'czxid', czxid)
  redis.call('SET', data_key, data)
  redis.call('HSET', meta_key,
    'czxid', czxid, 'mzxid', mzxid, 'pzxid', ARGV[s + 2], 'ctime', ARGV[s + 3], 'mtime', ARGV[s + 4],
    'version', ARGV[s + 5], 'cversion', ARGV[s + 6], 'aversion', ARGV[s + 7],
    'ephemeral_owner', ARGV[s + 8], 'data_length', ARGV[s + 9], 'num_children', ARGV[s + 10],
    'mirrored_at', now_ms, 'epoch', epoch)
  if children ~= 'keep' then
    if children == 'replace' then redis.call('DEL', children_key) end
    local i = first_child
    while i <= last_child do
      local last = math.min(i + 4999, last_child)
      redis.call('SADD', children_key, unpack(ARGV, i, last))
      i = last + 1
    end
  end
end

-- put.lua's body for one znode, after the fence, the stream and the deadline: keys from
-- KEYS[k], arguments from ARGV[a] (the child count).
local function put_one(k, a)
  local data_key, meta_key, children_key, tomb_key = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local n = tonumber(ARGV[a])
  local s = a + 1                 -- ARGV[s .. s + 10]: the Stat, in FIELDS order
  local path, data = ARGV[s + 11], ARGV[s + 12]
  local first_child, last_child = s + 13, s + 12 + n

  local czxid, mzxid, pzxid, aversion = ARGV[s], ARGV[s + 1], ARGV[s + 2], ARGV[s + 7]

  local tomb = redis.pcall('GET', tomb_key)
  if type(tomb) == 'table' and tomb['err'] then return failed(tomb_key, tomb) end
  if tomb then
    local tomb_zxid, tomb_epoch = tomb_parts(tomb)
    if tomb_epoch > epoch then return 5 end
    if tomb_epoch == epoch and cmp(czxid, tomb_zxid) <= 0 then return 3 end
  end
  local stored = redis.pcall('HMGET', meta_key, unpack(FIELDS))
  if stored['err'] then return failed(meta_key, stored) end
  local stored_epoch = tonumber(stored[12] or '0') or 0
  if stored_epoch > epoch then return 5 end

  local children_fresh = false
  if stored[1] and stored_epoch == epoch then
    local order = cmp(czxid, stored[1])
    if order == 0 then order = cmp(mzxid, stored[2] or '') end
    if order == 0 then order = cmp(pzxid, stored[3] or '') end
    if order == 0 then order = cmp(aversion, stored[8] or '') end
    if order < 0 then return 2 end
    if stored[1] == czxid and stored[3] == pzxid then
      local size = redis.pcall('SCARD', children_key)
      if type(size) == 'table' then return failed(children_key, size) end
      children_fresh = size == n
      if children_fresh then
        for i = first_child, last_child do
          if redis.call('SISMEMBER', children_key, ARGV[i]) == 0 then
            children_fresh = false
            break
          end
        end
      end
    end
    if order == 0 and children_fresh then
      local stored_data = redis.pcall('GET', data_key)
      if type(stored_data) == 'table' and stored_data['err'] then return failed(data_key, stored_data) end
      local same = stored_data == data
      for i = 1, NFIELDS do
        if stored[i] ~= ARGV[s + i - 1] then same = false end
      end
      if same then return 0 end
    end
  end

  write(data_key, meta_key, children_key, s, path, data, first_child, last_child,
    children_fresh and 'keep' or 'replace')
  return 1
end

-- The batch: for znode i, its first key and first argument.
local firsts = {}
do
  local k, a = 2, 6
  while a <= #ARGV do
    firsts[#firsts + 1] = {k, a}
    a = a + 14 + tonumber(ARGV[a])
    k = k + 5
  end
end

-- The fence first, as in put.lua; then the stream and the deadline, which hold for every znode.
local answers, open = {}, {}
for i, first in ipairs(firsts) do
  local refused = fence_one(KEYS[first[1] + 4])
  if refused then
    answers[i] = refused
  elseif stream_bad then
    answers[i] = {err = 'WRONGTYPE ' .. changes .. ' holds a ' .. stream_kind ..
      ', not the change stream: nothing written for ' .. ARGV[first[2] + 12] .. '; delete or rename the key'}
  elseif stale then
    answers[i] = 4
  else
    open[#open + 1] = i
  end
end

-- Nothing of these znodes in Redis (and no path twice, which would make the second compare
-- with the first): every one of them is written, with no comparison to make.
local fresh = #open > 0
local probe, seen = {}, {}
for _, i in ipairs(open) do
  local k = firsts[i][1]
  if seen[KEYS[k]] then fresh = false break end
  seen[KEYS[k]] = true
  probe[#probe + 1] = KEYS[k + 1]
  probe[#probe + 1] = KEYS[k + 2]
  probe[#probe + 1] = KEYS[k + 3]
end
if fresh then fresh = redis.call('EXISTS', unpack(probe)) == 0 end

if fresh then
  for _, i in ipairs(open) do
    local k, a = firsts[i][1], firsts[i][2]
    local n = tonumber(ARGV[a])
    write(KEYS[k], KEYS[k + 1], KEYS[k + 2], a + 1, ARGV[a + 12], ARGV[a + 13], a + 14, a + 13 + n, 'add')
    answers[i] = 1
  end
else
  for _, i in ipairs(open) do
    answers[i] = put_one(firsts[i][1], firsts[i][2])
  end
end
return answers
