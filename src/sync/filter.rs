//! `include` / `exclude` glob patterns on the key relative to the prefix (pure).
//!
//! - `*` matches within one path segment, `**` across segments, `?` one character (not `/`).
//! - A pattern without `/` matches the file name at any depth (`*.tmp` excludes `a/b.tmp`);
//!   a pattern with `/` matches the whole relative key (`logs/**`).
//! - Exclude wins over include; no include patterns means everything is included.

use crate::glob::Glob;

/// Include and exclude patterns together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    include: Vec<Glob>,
    exclude: Vec<Glob>,
}

impl Filter {
    /// Compiles the lists (already validated by the configuration; invalid ones are dropped).
    #[must_use]
    pub fn new(include: &[String], exclude: &[String]) -> Self {
        let compile = |v: &[String]| v.iter().filter_map(|p| Glob::new(p).ok()).collect();
        Self {
            include: compile(include),
            exclude: compile(exclude),
        }
    }

    /// Whether the object at `rel` is synced.
    #[must_use]
    pub fn allows(&self, rel: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(rel)))
            && !self.exclude.iter().any(|g| g.matches(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).unwrap().matches(t)
    }

    #[test]
    fn glob_semantics() {
        assert!(
            m("*.tmp", "a.tmp") && m("*.tmp", "x/y/a.tmp"),
            "name-only at any depth"
        );
        assert!(!m("*.tmp", "a.tmp.bak"));
        assert!(
            m("logs/*", "logs/a") && !m("logs/*", "logs/a/b"),
            "* stays in a segment"
        );
        assert!(m("logs/**", "logs/a/b/c"));
        assert!(m("**/cache/*", "a/b/cache/x"));
        assert!(m("data/?.bin", "data/1.bin") && !m("data/?.bin", "data/12.bin"));
        assert!(!m("a/b", "x/a/b"), "patterns with '/' are anchored");
        assert!(Glob::new("/abs").is_err() && Glob::new("").is_err());
    }

    #[test]
    fn exclude_wins() {
        let f = Filter::new(&["*.bin".into(), "docs/**".into()], &["secret*".into()]);
        assert!(f.allows("m/model.bin") && f.allows("docs/a/readme.md"));
        assert!(!f.allows("m/secret.bin"), "exclude wins over include");
        assert!(!f.allows("other.txt"), "not included");
        assert!(Filter::default().allows("anything"));
    }

    proptest! {
        #[test]
        fn literal_patterns_match_only_themselves(s in "[a-z]{1,8}(/[a-z]{1,8}){0,2}", t in "[a-z]{1,8}(/[a-z]{1,8}){0,2}") {
            prop_assume!(s.contains('/'));
            prop_assert_eq!(m(&s, &t), s == t);
            prop_assert!(m("**", &t));
        }
    }
}
