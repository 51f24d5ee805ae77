//! Filters, deletions with their guard, and dry runs.

mod common;

use common::{once_args, run_async, tree, Env};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn include_exclude_and_excluded_files_are_never_deleted() {
    let env = Env::default().await;
    for k in [
        "f/a.bin",
        "f/b.bin",
        "f/c.tmp",
        "f/logs/x.bin",
        "f/readme.md",
    ] {
        env.put(k, k).await;
    }
    let cfg = env.write_config(&env.config("f/", |m| {
        m.insert("include".into(), json!(["*.bin", "*.md"]));
        m.insert("exclude".into(), json!(["logs/**"]));
        m.insert("deleteExtraneous".into(), true.into());
        m.insert("maxDeletePercent".into(), 100.into());
    }));
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(
        (s["downloaded"].as_u64(), s["excluded"].as_u64()),
        (Some(3), Some(2)),
        "{s}"
    );
    assert_eq!(
        tree(&env.local).keys().collect::<Vec<_>>(),
        ["a.bin", "b.bin", "readme.md"]
    );

    // readme.md becomes excluded and its object disappears: an excluded file is never deleted.
    env.stack
        .s3
        .delete_object(env.bucket(), "f/readme.md")
        .unwrap();
    env.stack.s3.delete_object(env.bucket(), "f/b.bin").unwrap();
    let cfg = env.write_config(&env.config("f/", |m| {
        m.insert("include".into(), json!(["*.bin"]));
        m.insert("exclude".into(), json!(["logs/**"]));
        m.insert("deleteExtraneous".into(), true.into());
        m.insert("maxDeletePercent".into(), 100.into());
    }));
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["deleted"], 1, "{s}");
    assert_eq!(
        tree(&env.local).keys().collect::<Vec<_>>(),
        ["a.bin", "readme.md"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deletions_only_touch_unedited_files_the_component_wrote_and_respect_the_guard() {
    let env = Env::default().await;
    for i in 0..4 {
        env.put(&format!("d/{i}.txt"), format!("{i}").as_str())
            .await;
    }
    let edit = |m: &mut serde_json::Map<String, serde_json::Value>| {
        m.insert("deleteExtraneous".into(), "true".into());
    };
    env.once_with("d/", edit).await.assert_ok();
    std::fs::write(env.local.join("mine.txt"), "not from S3").unwrap();

    // 3 of 4 objects gone: 75% > the default 50%, so nothing is deleted and the pass says so.
    for i in 0..3 {
        env.stack
            .s3
            .delete_object(env.bucket(), &format!("d/{i}.txt"))
            .unwrap();
    }
    let r = env.once_with("d/", edit).await;
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let s = r.summary();
    assert_eq!(
        (s["deleted"].as_u64(), s["deletionsRefused"].as_u64()),
        (Some(0), Some(3)),
        "{s}"
    );
    assert!(
        s["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("maxDeletePercent"),
        "{s}"
    );
    assert_eq!(tree(&env.local).len(), 5);

    // With the guard raised: the files it wrote go, an edited one and a foreign one stay.
    std::fs::write(env.local.join("0.txt"), "edited by a person").unwrap();
    let s = env
        .once_with("d/", |m| {
            edit(m);
            m.insert("maxDeletePercent".into(), 100.into());
        })
        .await
        .assert_ok();
    assert_eq!(s["deleted"], 2, "{s}");
    assert_eq!(
        tree(&env.local).keys().collect::<Vec<_>>(),
        ["0.txt", "3.txt", "mine.txt"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_plan_and_changes_nothing() {
    let env = Env::default().await;
    env.put("r/new.txt", "n").await;
    env.put("r/gone.txt", "g").await;
    env.stack
        .s3
        .put_virtual_object(env.bucket(), "r/../evil", b"x".to_vec());
    let edit = |m: &mut serde_json::Map<String, serde_json::Value>| {
        m.insert("deleteExtraneous".into(), true.into());
        m.insert("maxDeletePercent".into(), 100.into());
    };
    env.once_with("r/", edit).await.assert_ok();
    env.put("r/new.txt", "changed").await;
    env.put("r/added.txt", "a").await;
    env.stack
        .s3
        .delete_object(env.bucket(), "r/gone.txt")
        .unwrap();
    let before = tree(&env.local);
    let state_before = tree(&env.state);
    let gets = env.stack.s3.get_count();

    let cfg = env.write_config(&env.config("r/", edit));
    let r = common::run(&["once", "--dry-run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let out = r.stdout();
    assert!(
        out.contains("would download r/added.txt -> added.txt: new"),
        "{out}"
    );
    assert!(
        out.contains("would download r/new.txt -> new.txt: changed"),
        "{out}"
    );
    assert!(
        out.contains("would delete r/gone.txt -> gone.txt: object is gone"),
        "{out}"
    );
    assert!(out.contains("would skip r/../evil"), "{out}");
    assert_eq!(tree(&env.local), before, "nothing written or deleted");
    assert_eq!(tree(&env.state), state_before, "state untouched");
    assert_eq!(env.stack.s3.get_count(), gets, "no object fetched");

    // A dry run into a folder that does not exist yet does not create it.
    let fresh = env.tmp.path().join("never-created");
    let cfg = env.write_config(&env.config("r/", |m| {
        m.insert("localDir".into(), fresh.display().to_string().into());
    }));
    let r = common::run(&["once", "--dry-run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(!fresh.exists());

    // Nor a state folder: a dry run writes nothing at all.
    let fresh_state = env.tmp.path().join("never-created-state");
    let cfg = env.write_config(&env.config("r/", |m| {
        m.insert("stateDir".into(), fresh_state.display().to_string().into());
    }));
    let r = common::run(&["once", "--dry-run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(!fresh_state.exists(), "stateDir not created by a dry run");
}

/// An object `a` that replaces a deleted `a/b` used to fail every pass ("folder, but the object
/// needs a file"): the folder emptied by the deletion was never removed. It is pruned now.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_can_replace_a_folder_emptied_by_deletion() {
    let env = Env::default().await;
    env.put("x/a/b/c.txt", "deep").await;
    env.put("x/keep.txt", "k").await;
    let edit = |m: &mut serde_json::Map<String, serde_json::Value>| {
        m.insert("deleteExtraneous".into(), true.into());
        m.insert("maxDeletePercent".into(), 100.into());
    };
    env.once_with("x/", edit).await.assert_ok();
    env.stack
        .s3
        .delete_object(env.bucket(), "x/a/b/c.txt")
        .unwrap();
    let _ = std::fs::remove_dir_all(env.stack.dir.join("s3").join(env.bucket()).join("x/a"));
    env.put("x/a", "now a file").await;
    // This pass deletes a/b/c.txt and prunes a/b and a; a's download meets the folder first.
    let _ = env.once_with("x/", edit).await;
    assert!(
        !env.local.join("a/b").exists(),
        "emptied folders are removed"
    );
    let s = env.once_with("x/", edit).await.assert_ok();
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(std::fs::read(env.local.join("a")).unwrap(), b"now a file");
    assert!(env.local.join("keep.txt").exists());
}

/// A file that cannot be deleted (here immutable, `chattr +i`) is that file's DeleteFailed:
/// the other deletions still happen and the state is committed. Before, one error (even
/// ENOENT) failed the whole pass and skipped the state commit.
#[tokio::test(flavor = "multi_thread")]
async fn one_failed_deletion_is_that_files_and_the_rest_proceed() {
    let env = Env::default().await;
    for k in ["d/stuck.txt", "d/gone.txt", "d/keep.txt"] {
        env.put(k, k).await;
    }
    let edit = |m: &mut serde_json::Map<String, serde_json::Value>| {
        m.insert("deleteExtraneous".into(), true.into());
        m.insert("maxDeletePercent".into(), 100.into());
    };
    env.once_with("d/", edit).await.assert_ok();
    let stuck = env.local.join("stuck.txt");
    let immutable = |on: bool| {
        std::process::Command::new("chattr")
            .arg(if on { "+i" } else { "-i" })
            .arg(&stuck)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !immutable(true) {
        eprintln!("SKIPPED: chattr +i is not supported here");
        return;
    }
    // Cleared on every way out, or the temporary folder could not be removed.
    struct Unlock<'a>(&'a dyn Fn(bool) -> bool);
    impl Drop for Unlock<'_> {
        fn drop(&mut self) {
            (self.0)(false);
        }
    }
    let _unlock = Unlock(&immutable);
    for k in ["d/stuck.txt", "d/gone.txt"] {
        env.stack.s3.delete_object(env.bucket(), k).unwrap();
    }
    let r = env.once_with("d/", edit).await;
    immutable(false);
    let s = r.summary();
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    assert_eq!(
        (s["deleted"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["failures"][0]["code"], "DeleteFailed", "{s}");
    assert!(!env.local.join("gone.txt").exists());
    // Now removable: the next pass deletes it (the state still knows it).
    let s = env.once_with("d/", edit).await.assert_ok();
    assert_eq!(s["deleted"], 1, "{s}");
    assert!(!stuck.exists());
}
