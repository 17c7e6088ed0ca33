//! Reads the copy the way an application does: a znode's data and meta from one `MULTI`, its
//! children, and the mirror's status hash `P:mirror`.
//!
//! Architecture invariant: this module never writes to Redis and never imports
//! `zookeeper_client`; it knows the layout only through [`Keys`].

use std::collections::HashMap;

use redis::aio::ConnectionLike;

use crate::schema::{status_field, Keys, STAT_FIELDS};

/// Failures reading the copy.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("cannot read from Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{key} field {field} holds {value:?}, not a number")]
    BadStatusField { key: String, field: &'static str, value: String },
}

/// One znode as the copy holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredZnode {
    pub data: Vec<u8>,
    /// `P:{PATH}:meta`: the `Stat` fields in [`STAT_FIELDS`] order, then any others by name.
    pub meta: Vec<(String, String)>,
}

/// Data and meta of `path`, read in one `MULTI` (so they belong together); `None` when the copy
/// holds neither.
pub async fn get<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    path: &str,
) -> Result<Option<StoredZnode>, ReaderError> {
    let (data, meta): (Option<Vec<u8>>, HashMap<String, String>) = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg(keys.data(path))
        .cmd("HGETALL")
        .arg(keys.meta(path))
        .query_async(conn)
        .await?;
    if data.is_none() && meta.is_empty() {
        return Ok(None);
    }
    Ok(Some(StoredZnode { data: data.unwrap_or_default(), meta: ordered_meta(meta) }))
}

/// The children of `path`, sorted; `None` when the copy does not hold `path`.
pub async fn children<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    path: &str,
) -> Result<Option<Vec<String>>, ReaderError> {
    let (exists, mut names): (bool, Vec<String>) = redis::pipe()
        .atomic()
        .cmd("EXISTS")
        .arg(keys.meta(path))
        .cmd("SMEMBERS")
        .arg(keys.children(path))
        .query_async(conn)
        .await?;
    if !exists && names.is_empty() {
        return Ok(None);
    }
    names.sort();
    Ok(Some(names))
}

fn ordered_meta(mut meta: HashMap<String, String>) -> Vec<(String, String)> {
    let mut ordered: Vec<(String, String)> =
        STAT_FIELDS.iter().filter_map(|field| meta.remove(*field).map(|value| ((*field).to_owned(), value))).collect();
    let mut rest: Vec<(String, String)> = meta.into_iter().collect();
    rest.sort();
    ordered.extend(rest);
    ordered
}

/// A status hash as a mirror last wrote it (see `schema/layout.md`): `P:mirror`, or one root's
/// `P:mirror:{ROOT}` when several roots share the prefix. Fields not written are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MirrorState {
    pub state: Option<String>,
    /// Highest zxid whose effect is in the keys (the aggregate: the lowest over its roots).
    pub zxid: Option<i64>,
    /// Unix ms of the last heartbeat.
    pub heartbeat_ms: Option<i64>,
    pub root: Option<String>,
    /// The aggregate's `roots` field, split; empty when the hash has none (one root).
    pub roots: Vec<String>,
    pub started_at_ms: Option<i64>,
    pub version: Option<String>,
}

impl MirrorState {
    /// Whether this is the aggregate of several roots sharing the prefix.
    pub fn is_shared(&self) -> bool {
        self.roots.len() > 1
    }
}

/// Reads `P:mirror`; `None` when no mirror has written it under this prefix.
pub async fn mirror_state<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
) -> Result<Option<MirrorState>, ReaderError> {
    read_state(conn, keys.status()).await
}

/// Reads one root's `P:mirror:{ROOT}` (written when several roots share the prefix); `None`
/// when absent.
pub async fn root_state<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    root: &str,
) -> Result<Option<MirrorState>, ReaderError> {
    read_state(conn, keys.root_status(root)).await
}

async fn read_state<C: ConnectionLike + Send>(conn: &mut C, key: String) -> Result<Option<MirrorState>, ReaderError> {
    let mut fields: HashMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(conn).await?;
    if fields.is_empty() {
        return Ok(None);
    }
    let number = |field: &'static str| -> Result<Option<i64>, ReaderError> {
        match fields.get(field) {
            None => Ok(None),
            Some(value) => value.trim().parse().map(Some).map_err(|_| ReaderError::BadStatusField {
                key: key.clone(),
                field,
                value: value.clone(),
            }),
        }
    };
    let zxid = number(status_field::ZXID)?;
    let heartbeat_ms = number(status_field::HEARTBEAT)?;
    let started_at_ms = number(status_field::STARTED_AT)?;
    Ok(Some(MirrorState {
        state: fields.remove(status_field::STATE),
        zxid,
        heartbeat_ms,
        root: fields.remove(status_field::ROOT),
        roots: fields.remove(status_field::ROOTS).map(|r| split_roots(&r)).unwrap_or_default(),
        started_at_ms,
        version: fields.remove(status_field::VERSION),
    }))
}

/// Splits the aggregate's comma-joined `roots`. A root may itself contain `,` (ZooKeeper allows
/// it), but every root starts with `/`: a piece that does not belongs to the root before it.
/// (Only a root with `,/` inside stays ambiguous.)
pub fn split_roots(text: &str) -> Vec<String> {
    let mut roots: Vec<String> = Vec::new();
    for piece in text.split(',') {
        match roots.last_mut() {
            Some(last) if !piece.starts_with('/') => {
                last.push(',');
                last.push_str(piece);
            }
            _ if piece.is_empty() => {}
            _ => roots.push(piece.to_owned()),
        }
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_split_on_commas_that_start_a_root() {
        assert_eq!(split_roots("/a,/b"), ["/a", "/b"]);
        assert_eq!(split_roots("/a,b,/c"), ["/a,b", "/c"]);
        assert_eq!(split_roots("/app"), ["/app"]);
        assert!(split_roots("").is_empty());
    }
}
