//! MQTT topic filters (pure): `+` matches one level, `#` the rest. Used for MQTT triggers and to
//! refuse a trigger filter that would match the component's own status topic.

/// Whether `filter` matches `topic`.
#[must_use]
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert!(matches("gg-s3-sync/sync-now", "gg-s3-sync/sync-now"));
        assert!(matches("fleet/+/sync", "fleet/t1/sync"));
        assert!(matches("fleet/#", "fleet/a/b"));
        assert!(matches("gg-s3-sync/#", "gg-s3-sync/status"));
        assert!(!matches("fleet/+", "fleet/a/b"));
        assert!(!matches("a/b", "a/b/c"));
    }
}
