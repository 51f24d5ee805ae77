//! `include` / `exclude` glob patterns on the key relative to the prefix (pure).
//!
//! - `*` matches within one path segment, `**` across segments, `?` one character (not `/`).
//! - A pattern without `/` matches the file name at any depth (`*.tmp` excludes `a/b.tmp`);
//!   a pattern with `/` matches the whole relative key (`logs/**`).
//! - Exclude wins over include; no include patterns means everything is included.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**`
    Stars,
}

/// One compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Tok>,
    name_only: bool,
    text: String,
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Glob {
    /// Compiles a pattern.
    ///
    /// # Errors
    /// The problem, phrased for a configuration error.
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("an empty pattern matches nothing".into());
        }
        if pattern.starts_with('/') {
            return Err("patterns are relative to the prefix; remove the leading '/'".into());
        }
        if pattern.contains('\0') {
            return Err("a pattern cannot contain NUL".into());
        }
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    Tok::Stars
                }
                '*' => Tok::Star,
                '?' => Tok::One,
                c => Tok::Lit(c),
            });
        }
        Ok(Self {
            tokens,
            name_only: !pattern.contains('/'),
            text: pattern.to_owned(),
        })
    }

    /// Whether `rel` (a key relative to the prefix) matches.
    #[must_use]
    pub fn matches(&self, rel: &str) -> bool {
        let target = if self.name_only {
            rel.rsplit('/').next().unwrap_or(rel)
        } else {
            rel
        };
        let text: Vec<char> = target.chars().collect();
        // dp[i][j]: tokens[..i] match text[..j].
        let (n, m) = (self.tokens.len(), text.len());
        let mut dp = vec![vec![false; m + 1]; n + 1];
        dp[0][0] = true;
        for i in 1..=n {
            for j in 0..=m {
                dp[i][j] = match &self.tokens[i - 1] {
                    Tok::Lit(c) => j > 0 && dp[i - 1][j - 1] && text[j - 1] == *c,
                    Tok::One => j > 0 && dp[i - 1][j - 1] && text[j - 1] != '/',
                    Tok::Star => dp[i - 1][j] || (j > 0 && dp[i][j - 1] && text[j - 1] != '/'),
                    Tok::Stars => dp[i - 1][j] || (j > 0 && dp[i][j - 1]),
                };
            }
        }
        dp[n][m]
    }
}

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
