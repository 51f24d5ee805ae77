//! Glob patterns on object keys (pure): `*` within a segment, `**` across segments, `?` one
//! character; a pattern without `/` matches the file name at any depth. Used by `include` and
//! `exclude` (validated in `config`, applied in `sync::filter`).

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
