//! Request counts per pass, per mode (the numbers in docs/fleet.md), measured on the devstack
//! with one engine reused across passes, as `run` does.

mod common;

use std::path::Path;

use common::Env;
use gg_s3_sync::clock;
use gg_s3_sync::config::Config;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// (credential requests, LISTs, GETs) for a first pass and then an unchanged pass.
async fn measure(
    env: &Env,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> [(u64, u64, u64); 2] {
    let value = env.config("f/", edit);
    let config = Config::from_value(&value, Path::new("/"), Path::new("/"))
        .unwrap()
        .config;
    let mut syncer = gg_s3_sync::app::engine(&config, clock::system()).unwrap();
    let counters = || {
        (
            env.stack.account.stats().credential_requests,
            env.stack.s3.list_count(),
            env.stack.s3.get_count(),
        )
    };
    let cancel = CancellationToken::new();
    let mut out = [(0, 0, 0); 2];
    for slot in &mut out {
        let before = counters();
        let s = syncer.run_pass(&cancel).await.unwrap();
        assert!(s.is_success(), "{s:?}");
        let after = counters();
        *slot = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn request_counts_per_pass() {
    let env = Env::default().await;
    for i in 0..1_200 {
        env.put(&format!("f/{i:05}.txt"), "x").await;
    }
    let keys: Vec<String> = (0..50).map(|i| format!("f/{i:05}.txt")).collect();
    env.put(
        "f/manifest.json",
        serde_json::to_string(&keys).unwrap().as_str(),
    )
    .await;

    let prefix = measure(&env, |_| {}).await;
    eprintln!(
        "prefix mode, 1201 objects: first {:?}, unchanged {:?}",
        prefix[0], prefix[1]
    );
    assert_eq!(
        prefix,
        [(1, 2, 1_201), (0, 2, 0)],
        "an unchanged pass costs only the LIST pages"
    );

    let keyed = measure(&env, |m| {
        m.insert("keys".into(), json!(keys));
        m.insert("stateDir".into(), json!(env.tmp.path().join("state-keys")));
    })
    .await;
    eprintln!(
        "keys mode, 50 keys: first {:?}, unchanged {:?}",
        keyed[0], keyed[1]
    );
    assert_eq!(
        keyed,
        [(1, 0, 50), (0, 0, 50)],
        "one (conditional) GET per key, nothing listed"
    );

    let manifest = measure(&env, |m| {
        m.insert("manifestKey".into(), json!("f/manifest.json"));
        m.insert(
            "stateDir".into(),
            json!(env.tmp.path().join("state-manifest")),
        );
    })
    .await;
    eprintln!(
        "manifest mode, 50 keys: first {:?}, unchanged {:?}",
        manifest[0], manifest[1]
    );
    assert_eq!(
        manifest,
        [(1, 0, 51), (0, 0, 51)],
        "the manifest plus one GET per key"
    );
}
