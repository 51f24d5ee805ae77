//! GetObject-only operation: `keys` and `manifestKey`, with conditional GETs (no listing).

mod common;

use common::{once_args, run_async, tree, Env};
use devstack::{Options, Policy};
use serde_json::json;

async fn get_only() -> Env {
    let o = Options::default();
    Env::start(Options {
        policy: Policy::get_only(&o.bucket),
        ..o
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_mode_syncs_with_get_object_only_and_costs_one_cheap_request_when_unchanged() {
    let env = get_only().await;
    env.put("cfg/a.json", r#"{"v":1}"#).await;
    env.put("cfg/sub/b.bin", "bee").await;
    env.put("cfg/not-listed.txt", "ignored").await;
    let cfg = env.write_config(&env.config("cfg/", |m| {
        m.insert("keys".into(), json!(["cfg/a.json", "cfg/sub/b.bin"]));
    }));
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(
        (s["listed"].as_u64(), s["downloaded"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert_eq!(tree(&env.local).len(), 2);
    assert_eq!(env.stack.s3.list_count(), 0, "nothing is listed");

    // Unchanged: one conditional GET each, answered 304, no body.
    let gets = env.stack.s3.get_count();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(
        (
            s["downloaded"].as_u64(),
            s["unchanged"].as_u64(),
            s["bytes"].as_u64()
        ),
        (Some(0), Some(2), Some(0)),
        "{s}"
    );
    assert_eq!(env.stack.s3.get_count() - gets, 2);

    // Changed (same size): the conditional GET returns the new body.
    env.put("cfg/a.json", r#"{"v":2}"#).await;
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert_eq!(tree(&env.local)["a.json"], br#"{"v":2}"#);

    // Edited locally: fetched again even though the object did not change.
    std::fs::write(env.local.join("sub/b.bin"), "tampered").unwrap();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert_eq!(tree(&env.local)["sub/b.bin"], b"bee");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_key_without_list_bucket_is_access_denied_and_says_why() {
    let env = get_only().await;
    env.put("cfg/a.json", "{}").await;
    let r = env
        .once_with("cfg/", |m| {
            m.insert("keys".into(), json!(["cfg/a.json", "cfg/missing.json"]));
        })
        .await;
    assert_eq!(r.code(), Some(1));
    let s = r.summary();
    assert_eq!(
        (s["downloaded"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let msg = s["failures"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("AccessDenied") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_mode_with_cache_and_deletions() {
    let env = get_only().await;
    env.put("m/one.txt", "1").await;
    env.put("m/two.txt", "2").await;
    env.put("m/three.txt", "3").await;
    env.put(
        "m/manifest.txt",
        "# what this device needs\nm/one.txt\nm/two.txt\nm/three.txt\n",
    )
    .await;
    let cfg = env.write_config(&env.config("m/", |m| {
        m.insert("manifestKey".into(), "m/manifest.txt".into());
        m.insert("deleteExtraneous".into(), true.into());
        m.insert("maxDeletePercent".into(), "50".into());
    }));
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 3, "{s}");

    // The manifest is unchanged: it costs a 304 and the cached copy is used.
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(
        (s["listed"].as_u64(), s["unchanged"].as_u64()),
        (Some(3), Some(3)),
        "{s}"
    );

    // An entry disappears from the manifest (JSON form this time): its file is deleted.
    env.put("m/manifest.txt", r#"["m/one.txt", "m/two.txt"]"#)
        .await;
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["deleted"], 1, "{s}");
    assert_eq!(
        tree(&env.local).keys().collect::<Vec<_>>(),
        ["one.txt", "two.txt"]
    );

    // A broken manifest fails the pass and deletes nothing.
    env.put("m/manifest.txt", r#"["m/one.txt", 7]"#).await;
    let r = run_async(once_args(&cfg)).await;
    assert_eq!(r.code(), Some(1));
    assert!(
        r.stderr().contains("manifest s3://") && r.stderr().contains("item 1"),
        "{}",
        r.stderr()
    );
    assert_eq!(tree(&env.local).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_mode_denied_listing_points_to_keys_and_manifest() {
    let env = get_only().await;
    let r = env.once_with("x/", |_| {}).await;
    assert_eq!(r.code(), Some(1));
    let err = r.stderr();
    assert!(
        err.contains("s3:ListBucket") && err.contains("keys or manifestKey"),
        "{err}"
    );
}

#[test]
fn keys_and_manifest_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    let base = json!({
        "roleAlias": "a", "bucket": "bkt", "localDir": "/tmp/x", "region": "us-east-1",
        "credentialsEndpoint": "h", "certificateFilePath": "c", "privateKeyPath": "k", "rootCaPath": "r",
        "prefix": "p/",
    });
    let mut v = base.clone();
    v["keys"] = json!(["p/a", "q/b"]);
    v["manifestKey"] = json!("p/m");
    v["include"] = json!(["/abs"]);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let r = common::run(&["once", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code(), Some(2));
    let err = r.stderr();
    assert!(
        err.contains("manifestKey: set either keys or manifestKey, not both"),
        "{err}"
    );
    assert!(
        err.contains("include: '/abs': patterns are relative to the prefix"),
        "{err}"
    );
    let mut v = base;
    v["keys"] = json!(["p/a", "q/b"]);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let r = common::run(&["once", "--config", cfg.to_str().unwrap()]);
    assert!(
        r.stderr().contains("keys: 'q/b' is not under prefix 'p/'"),
        "{}",
        r.stderr()
    );
}
