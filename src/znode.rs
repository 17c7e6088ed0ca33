//! The small types that cross from the ZooKeeper side to the Redis side.
//!
//! Architecture invariant: these types know neither `zookeeper_client` nor `redis`; `zk.rs`
//! produces them and `store.rs` consumes them.

/// ZooKeeper's `Stat`, field for field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZnodeStat {
    pub czxid: i64,
    pub mzxid: i64,
    pub pzxid: i64,
    pub ctime: i64,
    pub mtime: i64,
    pub version: i32,
    pub cversion: i32,
    pub aversion: i32,
    pub ephemeral_owner: i64,
    pub data_length: i32,
    pub num_children: i32,
}

impl ZnodeStat {
    /// The fields as decimal strings, in the order of [`crate::schema::STAT_FIELDS`].
    pub fn fields(&self) -> [String; 11] {
        [
            self.czxid.to_string(),
            self.mzxid.to_string(),
            self.pzxid.to_string(),
            self.ctime.to_string(),
            self.mtime.to_string(),
            self.version.to_string(),
            self.cversion.to_string(),
            self.aversion.to_string(),
            self.ephemeral_owner.to_string(),
            self.data_length.to_string(),
            self.num_children.to_string(),
        ]
    }

    /// The highest zxid this read proves applied: data changes and child changes.
    pub fn last_zxid(&self) -> i64 {
        self.mzxid.max(self.pzxid)
    }
}

/// One znode as read at one moment: data, `Stat` and children from the same snapshot.
#[derive(Clone, Debug)]
pub struct Znode {
    pub path: String,
    pub data: Vec<u8>,
    pub stat: ZnodeStat,
    pub children: Vec<String>,
}

/// What one read of a path found.
#[derive(Clone, Debug)]
pub enum Fetched {
    Present(Znode),
    /// The path does not exist. `tomb_zxid` is a zxid at which every incarnation of the path
    /// created so far is known to be dead (read before the read that found it absent).
    Absent {
        path: String,
        tomb_zxid: Option<i64>,
    },
    /// ZooKeeper refused to show it (`NoAuth`): it must not be in Redis. `stat` is its `Stat`
    /// (from `exists()`, which needs no permission) at the moment it was found unreadable: the
    /// hide is ordered by it against what Redis holds, like a put.
    Unreadable {
        path: String,
        stat: ZnodeStat,
    },
}
