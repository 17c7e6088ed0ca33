//! Fence keys: one per Redis Cluster hash slot, so that every script can check the fence in
//! the slot of the keys it writes (a script may only touch keys of one slot on a cluster).
//!
//! The fence key of slot `s` is `P:fence:{T}`, where `T` is the smallest decimal number whose
//! CRC16 (XMODEM, Redis's key hash) modulo 16,384 is `s`; any other program can rebuild the same
//! table. A script writing keys in slot `s` passes `P:fence:{T}` as one of its keys; a new leader
//! raises all 16,384 before its first write (see `schema/layout.md`, "Several mirrors: the
//! fence"). On a single Redis server the slots mean nothing, and the same keys work unchanged.

use std::sync::OnceLock;

/// Redis Cluster's number of hash slots.
pub(crate) const SLOTS: usize = 16_384;

/// The hash slot of `key`, by Redis's rule: the hash tag (between the first `{` and the first
/// `}` after it, when not empty) or else the whole key, CRC16 XMODEM, modulo 16,384.
pub(crate) fn slot_of(key: &str) -> usize {
    slot_of_bytes(key.as_bytes())
}

/// [`slot_of`] for a key that may not be UTF-8 (a command's argument).
pub(crate) fn slot_of_bytes(bytes: &[u8]) -> usize {
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter().position(|b| *b == b'}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(bytes);
    usize::from(crc16::State::<crc16::XMODEM>::calculate(hashed)) % SLOTS
}

/// The tag of every slot: `tags()[s]` hashes to slot `s`. Built once (about 170,000 CRCs).
fn tags() -> &'static [u32] {
    static TAGS: OnceLock<Vec<u32>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; SLOTS];
        let mut missing = SLOTS;
        let mut n: u32 = 0;
        while missing > 0 {
            let slot = usize::from(crc16::State::<crc16::XMODEM>::calculate(n.to_string().as_bytes())) % SLOTS;
            if tags[slot] == u32::MAX {
                tags[slot] = n;
                missing -= 1;
            }
            n += 1;
        }
        tags
    })
}

/// `P:fence:{T}` for slot `slot` (taken modulo [`SLOTS`]).
pub(crate) fn fence_key(prefix: &str, slot: usize) -> String {
    format!("{prefix}:fence:{{{}}}", tags()[slot % SLOTS])
}

/// The fence key that guards writes of `key`: the one in the same hash slot.
pub(crate) fn fence_key_for(prefix: &str, key: &str) -> String {
    fence_key(prefix, slot_of(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_rules() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of("123456789"), 12739);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        assert_eq!(slot_of("foo{}{bar}"), slot_of("foo{}{bar}"));
        assert_ne!(slot_of("foo{}{bar}"), slot_of("bar"), "an empty tag hashes the whole key");
        assert_eq!(slot_of("foo{{bar}}zap"), slot_of("{bar"));
        assert_eq!(slot_of("zk:{/a}x}:meta"), slot_of("/a"));
    }

    #[test]
    fn every_slot_has_a_fence_key_in_that_slot() {
        for slot in 0..SLOTS {
            assert_eq!(slot_of(&fence_key("zk", slot)), slot, "slot {slot}");
        }
        let key = "zk:{/app/db}:meta";
        assert_eq!(slot_of(&fence_key_for("zk", key)), slot_of(key));
    }
}
