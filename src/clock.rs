//! The wall clock, in the unit the layout uses: Unix milliseconds. One place, so that every
//! timestamp the mirror writes or compares (heartbeats, `mirrored_at`, lease ages, read
//! deadlines) comes from the same reading and the same clock-before-1970 answer (0).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in ms, by this machine's clock; 0 if the clock is before 1970.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
