-- fence.lua — publish a new leader's fencing token in one hash slot.
--
-- A new leader runs it once for each of the 16,384 fence keys (one per hash slot, see
-- layout.md) before its first write, so that a deposed leader's late write to any slot is
-- refused, even in a slot the new leader has not written yet.
--
-- KEYS: 1 fence key (STRING)
-- ARGV: 1 token (decimal)
-- Returns: 1; or the error reply `FENCED <seen> <key>` if the slot has seen a higher token

local refused = fence(KEYS[1], ARGV[1])
if refused then return refused end
return 1
