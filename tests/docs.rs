//! The README's configuration table documents exactly the keys the binary accepts.

use std::collections::BTreeSet;

#[test]
fn readme_configuration_table_matches_the_accepted_keys() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Configuration")
        .nth(1)
        .expect("a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    let documented: BTreeSet<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let accepted: BTreeSet<&str> = gg_s3_sync::config::KNOWN_KEYS.iter().copied().collect();
    assert_eq!(documented, accepted);
}
