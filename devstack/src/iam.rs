//! A small IAM-like policy: allow statements of actions on resources, with `*` and `?`
//! wildcards, and the mapping from S3 operations to IAM actions and ARNs.

use serde::{Deserialize, Serialize};

/// One allow statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// IAM actions, e.g. `s3:GetObject`, `s3:*`.
    pub actions: Vec<String>,
    /// ARNs, e.g. `arn:aws:s3:::bucket/prefix/*`.
    pub resources: Vec<String>,
}

/// A role's permissions: anything not allowed is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Allow statements.
    pub statements: Vec<Statement>,
}

impl Policy {
    /// Everything on every resource.
    #[must_use]
    pub fn allow_all() -> Self {
        Self::allow(&["*"], &["*"])
    }

    /// One statement.
    #[must_use]
    pub fn allow(actions: &[&str], resources: &[&str]) -> Self {
        Self {
            statements: vec![Statement {
                actions: actions.iter().map(|s| (*s).to_owned()).collect(),
                resources: resources.iter().map(|s| (*s).to_owned()).collect(),
            }],
        }
    }

    /// `s3:GetObject` and `s3:ListBucket` on a bucket (the prefix-mode policy).
    #[must_use]
    pub fn read_bucket(bucket: &str) -> Self {
        Self {
            statements: vec![
                Statement {
                    actions: vec!["s3:GetObject".into()],
                    resources: vec![format!("arn:aws:s3:::{bucket}/*")],
                },
                Statement {
                    actions: vec!["s3:ListBucket".into()],
                    resources: vec![format!("arn:aws:s3:::{bucket}")],
                },
            ],
        }
    }

    /// [`Policy::read_bucket`] plus `s3:GetObjectVersion` (pinned manifest versions).
    #[must_use]
    pub fn read_versions(bucket: &str) -> Self {
        let mut p = Self::read_bucket(bucket);
        p.statements[0].actions.push("s3:GetObjectVersion".into());
        p
    }

    /// Only `s3:GetObject` on a bucket (least privilege: listing is denied).
    #[must_use]
    pub fn get_only(bucket: &str) -> Self {
        Self::allow(&["s3:GetObject"], &[&format!("arn:aws:s3:::{bucket}/*")])
    }

    /// Whether `action` on `resource` is allowed.
    #[must_use]
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        self.statements.iter().any(|s| {
            s.actions
                .iter()
                .any(|a| glob(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
                && s.resources.iter().any(|r| glob(r, resource))
        })
    }
}

/// Case-sensitive glob with `*` (any run) and `?` (one character).
#[must_use]
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The IAM action and resource ARN an S3 operation needs.
#[must_use]
pub fn s3_action(op: &str, bucket: Option<&str>, key: Option<&str>) -> (String, String) {
    let object = || {
        format!(
            "arn:aws:s3:::{}/{}",
            bucket.unwrap_or(""),
            key.unwrap_or("")
        )
    };
    let bucket_arn = || format!("arn:aws:s3:::{}", bucket.unwrap_or(""));
    match op {
        "GetObject" | "HeadObject" => ("s3:GetObject".into(), object()),
        "ListObjects" | "ListObjectsV2" | "HeadBucket" => ("s3:ListBucket".into(), bucket_arn()),
        "PutObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "CompleteMultipartUpload"
        | "CopyObject"
        | "UploadPartCopy" => ("s3:PutObject".into(), object()),
        "AbortMultipartUpload" => ("s3:AbortMultipartUpload".into(), object()),
        "ListParts" => ("s3:ListMultipartUploadParts".into(), object()),
        "DeleteObject" | "DeleteObjects" => (
            "s3:DeleteObject".into(),
            if key.is_some() {
                object()
            } else {
                bucket_arn()
            },
        ),
        "ListBuckets" => ("s3:ListAllMyBuckets".into(), "*".into()),
        other => (format!("s3:{other}"), bucket_arn()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("arn:aws:s3:::b/*", "arn:aws:s3:::b/x/y"));
        assert!(!glob("arn:aws:s3:::b/*", "arn:aws:s3:::b"));
        assert!(glob("s3:Get*", "s3:GetObject"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
        assert!(glob("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn get_only_denies_listing() {
        let p = Policy::get_only("b");
        let (a, r) = s3_action("GetObject", Some("b"), Some("k"));
        assert!(p.allows(&a, &r));
        let (a, r) = s3_action("ListObjectsV2", Some("b"), None);
        assert!(!p.allows(&a, &r));
        assert!(Policy::read_bucket("b").allows(&a, &r));
        let (a, r) = s3_action("PutObject", Some("b"), Some("k"));
        assert!(!Policy::read_bucket("b").allows(&a, &r));
    }
}
