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

/// docs/reliability.md: at least 40 rows, and every test it names exists where it says.
#[test]
fn reliability_table_names_tests_that_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/reliability.md")).unwrap();
    let mut rows = 0;
    for line in doc
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| #"))
    {
        let Some(proof) = line.rsplit('`').nth(1) else {
            continue;
        };
        let Some((file, test)) = proof.split_once("::") else {
            continue;
        };
        rows += 1;
        let text = std::fs::read_to_string(format!("{root}/{file}"))
            .unwrap_or_else(|e| panic!("{file} (named in docs/reliability.md): {e}"));
        assert!(
            text.contains(&format!("fn {test}(")),
            "docs/reliability.md names {file}::{test}, which does not exist"
        );
    }
    assert!(rows >= 40, "{rows} rows");
}
