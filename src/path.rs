//! ZooKeeper path rules the mirror relies on: what a valid root is, parents, children, scope.

use crate::error::ConfigError;

/// Checks that `path` is an absolute ZooKeeper path as the server accepts it: starts with `/`,
/// no trailing `/` (except the root `/` itself), no empty, `.` or `..` segments, no NUL.
pub fn validate(path: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::BadRoot { root: path.to_owned(), why: why.to_owned() };
    if !path.starts_with('/') {
        return Err(bad("it must be absolute (start with '/')"));
    }
    if path == "/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(bad("it must not end with '/'"));
    }
    if path.contains('\0') {
        return Err(bad("it must not contain a NUL character"));
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(bad("it must not contain an empty segment ('//')")),
            "." | ".." => return Err(bad("'.' and '..' are not allowed as path segments")),
            _ => {}
        }
    }
    Ok(())
}

/// The parent of `path`, or `None` for `/`.
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// The last segment of `path` (the name its parent lists).
pub fn name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `parent` joined with a child name.
pub fn child(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `path` is `root` or lies below it.
pub fn is_within(path: &str, root: &str) -> bool {
    if root == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(root) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_roots() {
        for good in ["/", "/app", "/app/db", "/a b/ü:{x}"] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in ["", "app", "/app/", "/a//b", "/a/./b", "/a/..", "/a\0b"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parents_children_and_scope() {
        assert_eq!(parent("/"), None);
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(name("/a/b c"), "b c");
        assert_eq!(child("/", "a"), "/a");
        assert_eq!(child("/a", "b"), "/a/b");
        assert!(is_within("/app", "/app"));
        assert!(is_within("/app/x", "/app"));
        assert!(!is_within("/app2", "/app"));
        assert!(is_within("/anything", "/"));
    }
}
