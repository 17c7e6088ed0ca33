-- common.lua — prepended to every script (put, delete, status, advance_zxid, fence):
-- the one copy of what they share. `SCRIPT LOAD` sees this text followed by the script's own.

-- zxids are 64-bit; Lua numbers are doubles, so compare them as decimal strings.
local function cmp(a, b)
  if #a ~= #b then
    if #a < #b then return -1 else return 1 end
  end
  if a == b then return 0 end
  if a < b then return -1 else return 1 end
end

-- A tombstone's value: `T` in history 0, `T@E` in history E >= 1.
local function tomb_parts(value)
  local zxid, epoch = string.match(value, '^(%d+)@(%d+)$')
  if zxid then return zxid, tonumber(epoch) end
  return value, 0
end

-- An error reply, before anything is written, when `key` (the change stream, whose XADD is a
-- script's first write) holds something other than a stream; nil when it is a stream or absent.
local function stream_unusable(key, path, what)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. kind ..
      ', not the change stream: nothing ' .. what .. ' for ' .. path .. '; delete or rename the key')
  end
  return nil
end

-- Whether Redis's own clock is past `deadline` (unix ms; empty or nil: no deadline). Judged
-- here, where a pause of the mirror cannot hide (see put.lua).
local function past_deadline(deadline)
  if not deadline or deadline == '' then return false end
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(deadline)
end

-- The fence (see layout.md, "Several mirrors: the fence"). `key` is the fence key of the hash
-- slot of the keys the script writes; `token` the writer's fencing token (the czxid of its
-- ZooKeeper lock znode), or '' for a mirror run without an election, which is not fenced.
-- A token below the one the slot has seen is refused with an error reply
-- `FENCED <seen> <key>`, before the script writes anything; a higher one raises the slot's
-- fence, so every write a leader makes also shuts out every earlier leader in its slot.
local function fence(key, token)
  if token == '' then return nil end
  local seen = redis.call('GET', key)
  if seen and cmp(seen, token) > 0 then
    return redis.error_reply('FENCED ' .. seen .. ' ' .. key ..
      ': a newer leader writes here; this writer (token ' .. token .. ') must step down')
  end
  if seen ~= token then redis.call('SET', key, token) end
  return nil
end
