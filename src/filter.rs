//! Which znodes below a root get keys: include/exclude globs and a maximum depth.
//!
//! Filters decide only which znodes are *copied*. A copied znode's `Stat` and children set stay
//! exactly what ZooKeeper says (its `num_children` counts excluded children too), so the copy
//! of every included znode is still bit for bit.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::ConfigError;

/// Patterns are matched against absolute paths; `*` stays within one segment, `**` crosses
/// segments (`/app/locks/**` is everything below `/app/locks`, not `/app/locks` itself).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    include_patterns: Vec<String>,
    exclude_patterns: Vec<String>,
    max_depth: Option<usize>,
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.include_patterns == other.include_patterns
            && self.exclude_patterns == other.exclude_patterns
            && self.max_depth == other.max_depth
    }
}

impl Filter {
    /// Everything below the root.
    pub fn all() -> Filter {
        Filter::default()
    }

    pub fn new(include: &[String], exclude: &[String], max_depth: Option<usize>) -> Result<Filter, ConfigError> {
        Ok(Filter {
            include: build(include, "include")?,
            exclude: build(exclude, "exclude")?,
            include_patterns: include.to_vec(),
            exclude_patterns: exclude.to_vec(),
            max_depth,
        })
    }

    pub fn is_all(&self) -> bool {
        self.include.is_none() && self.exclude.is_none() && self.max_depth.is_none()
    }

    /// Whether `path` is copied. A path that is not `root` or below it never is (it comes from
    /// a watch event or a key, so it is input: no answer may panic).
    pub fn admits(&self, root: &str, path: &str) -> bool {
        let Some(depth) = depth(root, path) else { return false };
        if self.max_depth.is_some_and(|max| depth > max) {
            return false;
        }
        if self.exclude.as_ref().is_some_and(|set| set.is_match(path)) {
            return false;
        }
        self.include.as_ref().is_none_or(|set| set.is_match(path))
    }

    /// Whether anything below `path` can be copied: the walk stops descending where not (and
    /// never outside `root`).
    pub fn may_descend(&self, root: &str, path: &str) -> bool {
        let Some(depth) = depth(root, path) else { return false };
        if self.max_depth.is_some_and(|max| depth >= max) {
            return false;
        }
        // An excluded `path/**` rules out every descendant: one pattern matching both a probe
        // child and a probe grandchild tells. (Two patterns, such as `/a/*` and `/a/*/x`, do not:
        // together they leave `/a/b/y` copied.)
        let Some(exclude) = &self.exclude else { return true };
        let probe = format!("{}/\u{0}probe", path.trim_end_matches('/'));
        let child = exclude.matches(&probe);
        if child.is_empty() {
            return true;
        }
        let grandchild = exclude.matches(format!("{probe}/x"));
        !child.iter().any(|i| grandchild.contains(i))
    }

    /// Whether a walk from `root` reaches `path` and copies it: `path` is admitted and every
    /// znode above it, from `root` down, may be descended into.
    pub fn copies(&self, root: &str, path: &str) -> bool {
        if self.is_all() {
            // The common case, on every event: no glob to match.
            return crate::path::is_within(path, root);
        }
        if !crate::path::is_within(path, root) || !self.admits(root, path) {
            return false;
        }
        std::iter::successors(crate::path::parent(path), |p| crate::path::parent(p))
            .take_while(|p| crate::path::is_within(p, root))
            .all(|p| self.may_descend(root, p))
    }

    pub fn describe(&self) -> String {
        format!(
            "include {:?}, exclude {:?}, max depth {}",
            self.include_patterns,
            self.exclude_patterns,
            self.max_depth.map_or("none".to_owned(), |d| d.to_string())
        )
    }
}

/// Depth of `path` below `root` (the root is 0, its children 1), or `None` when `path` is not
/// `root` or below it. `strip_prefix` rather than slicing at `root.len()`: that byte may lie
/// inside a multi-byte character of a path outside the root.
fn depth(root: &str, path: &str) -> Option<usize> {
    if !crate::path::is_within(path, root) {
        return None;
    }
    let rest = if root == "/" { Some(path) } else { path.strip_prefix(root) }?;
    Some(rest.split('/').filter(|s| !s.is_empty()).count())
}

fn build(patterns: &[String], what: &'static str) -> Result<Option<GlobSet>, ConfigError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob: Glob = GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| ConfigError::BadSetting { name: what, why: format!("glob {pattern:?}: {e}") })?;
        builder.add(glob);
    }
    builder.build().map(Some).map_err(|e| ConfigError::BadSetting { name: what, why: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str], max_depth: Option<usize>) -> Filter {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&strings(include), &strings(exclude), max_depth).expect("valid filter")
    }

    #[test]
    fn exclude_skips_a_subtree_but_keeps_its_top() {
        let f = filter(&[], &["/app/locks/**"], None);
        assert!(f.admits("/app", "/app/locks"));
        assert!(!f.admits("/app", "/app/locks/l1"));
        assert!(!f.admits("/app", "/app/locks/l1/deep"));
        assert!(f.admits("/app", "/app/db"));
        assert!(!f.may_descend("/app", "/app/locks"));
        assert!(f.may_descend("/app", "/app/db"));
    }

    #[test]
    fn star_stays_within_a_segment() {
        let f = filter(&[], &["/app/*/secret"], None);
        assert!(!f.admits("/app", "/app/svc/secret"));
        assert!(f.admits("/app", "/app/svc/x/secret"));
    }

    #[test]
    fn include_limits_what_is_copied_and_depth_bounds_it() {
        let f = filter(&["/app", "/app/svc", "/app/svc/**"], &[], Some(2));
        assert!(f.admits("/app", "/app"));
        assert!(f.admits("/app", "/app/svc/a"));
        assert!(!f.admits("/app", "/app/other"));
        assert!(!f.admits("/app", "/app/svc/a/b"));
        assert!(!f.may_descend("/app", "/app/svc/a"));
        assert!(filter(&[], &[], Some(0)).admits("/", "/"));
        assert!(!filter(&[], &[], Some(0)).admits("/", "/a"));
    }

    #[test]
    fn two_patterns_that_leave_grandchildren_copied_do_not_stop_the_walk() {
        let f = filter(&[], &["/app/*", "/app/*/x"], None);
        assert!(f.may_descend("/app", "/app"));
        assert!(f.copies("/app", "/app/b/y"));
        assert!(!f.copies("/app", "/app/b"));
        let f = filter(&[], &["/app/locks/**"], Some(3));
        assert!(f.copies("/app", "/app/locks"));
        assert!(!f.copies("/app", "/app/locks/l1"));
        assert!(!f.copies("/app", "/app/a/b/c/d"));
        assert!(!f.copies("/app", "/other"));
    }

    #[test]
    fn bad_glob_is_named() {
        let err = Filter::new(&["/app/[".to_string()], &[], None).unwrap_err().to_string();
        assert!(err.contains("/app/["), "{err}");
    }
}

#[cfg(test)]
mod outside_the_root {
    use super::*;

    fn depth_limited() -> Filter {
        Filter::new(&[], &[], Some(1)).expect("valid filter")
    }

    /// `path[root.len()..]` on a path that is not under the root cut a multi-byte character in
    /// half: `/ab` is 3 bytes, and byte 3 of `/aé` is inside `é`.
    #[test]
    fn a_path_outside_the_root_is_not_admitted_and_does_not_panic() {
        let f = depth_limited();
        assert!(!f.admits("/ab", "/aé"));
        assert!(!f.may_descend("/ab", "/aé"));
        assert!(!f.copies("/ab", "/aé"));
        assert!(!f.admits("/é", "/x"));
        assert!(!f.admits("/app", "/"));
        assert!(!f.admits("/app", ""));
        // A sibling that merely starts with the root's text is outside it too.
        assert!(!f.admits("/app", "/apple/x/y"));
        assert!(!Filter::all().admits("/app", "/apple"));
    }

    #[test]
    fn non_ascii_paths_under_the_root_count_their_depth_in_segments() {
        let f = depth_limited();
        assert!(f.admits("/é", "/é"));
        assert!(f.admits("/é", "/é/日本"));
        assert!(!f.admits("/é", "/é/日本/語"));
        assert!(f.may_descend("/é", "/é"));
        assert!(!f.may_descend("/é", "/é/日本"));
        assert!(f.admits("/", "/ü"));
        assert!(!f.admits("/", "/ü/ß"));
        let globbed = Filter::new(&[], &["/é/日本/**".to_owned()], None).expect("valid filter");
        assert!(globbed.admits("/é", "/é/日本"));
        assert!(!globbed.admits("/é", "/é/日本/x"));
        assert!(!globbed.may_descend("/é", "/é/日本"));
    }

    /// Every split point of a non-ASCII path, as root and path both ways: never a panic.
    #[test]
    fn no_pair_of_strings_panics() {
        let f = depth_limited();
        let g = Filter::new(&["/**".to_owned()], &["/a*/**".to_owned()], Some(2)).expect("valid filter");
        let cuts: Vec<&str> = ["/aé/日本/x", "/ab/日x/本é", "/é"]
            .iter()
            .flat_map(|text| (0..=text.len()).filter_map(|i| text.get(..i)))
            .collect();
        for root in &cuts {
            for path in &cuts {
                for filter in [&f, &g] {
                    let _ = (filter.admits(root, path), filter.may_descend(root, path), filter.copies(root, path));
                }
            }
        }
    }
}
