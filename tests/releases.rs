//! Atomic content releases (`releases: {keep: N}`), end to end with the real binary: the link
//! switch, hard links, read-only files, retention, failed passes, a reader that must never see
//! two releases at once, kill -9, rollback, and pinned manifest versions.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{once_args, run_async, tree, Env};
use devstack::s3::Fault;
use serde_json::{json, Value};

fn with_releases(keep: u64) -> impl FnOnce(&mut serde_json::Map<String, Value>) {
    move |m| {
        m.insert("releases".into(), json!({ "keep": keep }));
    }
}

fn releases_dir(env: &Env) -> PathBuf {
    env.local.parent().unwrap().join(".local.releases")
}

/// Release folders (ids), oldest first.
fn release_ids(env: &Env) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(releases_dir(env))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().unwrap().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The release `localDir` points at.
fn live(env: &Env) -> String {
    let target = std::fs::read_link(&env.local).expect("localDir is a link");
    target.file_name().unwrap().to_string_lossy().into_owned()
}

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_switches_whole_links_unchanged_files_and_keeps_n() {
    let env = Env::default().await;
    env.put("r/model.bin", "model v1").await;
    env.put("r/labels.txt", "labels v1").await;
    env.put("r/sub/keep.txt", "unchanged").await;
    let cfg = env.write_config(&env.config("r/", with_releases(2)));

    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 3, "{s}");
    assert_eq!(s["release"]["switched"], true, "{s}");
    let first = live(&env);
    assert_eq!(s["release"]["live"]["id"], first.as_str(), "{s}");
    assert_eq!(s["release"]["live"]["files"], 3, "{s}");
    assert!(s["release"]["previous"].is_null(), "{s}");
    assert!(std::fs::symlink_metadata(&env.local)
        .unwrap()
        .file_type()
        .is_symlink());
    let t = tree(&env.local);
    assert_eq!(t.len(), 3, "{:?}", t.keys());
    assert_eq!(t["model.bin"], b"model v1");
    // Read-only files.
    let mode = std::fs::metadata(env.local.join("model.bin"))
        .unwrap()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o444);

    // Nothing changed: no new release, no staging left.
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["release"]["switched"], false, "{s}");
    assert_eq!(release_ids(&env), vec![first.clone()]);
    assert!(!releases_dir(&env).join(".staging").exists());

    // A set changes together: both files switch in one step; the unchanged file is a hard
    // link to the previous release's (same inode, no GET for it).
    let old_keep = ino(&env.local.join("sub/keep.txt"));
    env.put("r/model.bin", "model v2").await;
    env.put("r/labels.txt", "labels v2").await;
    let gets = env.stack.s3.get_count();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 2, "{s}");
    assert_eq!(
        env.stack.s3.get_count() - gets,
        2,
        "only the changed objects are fetched"
    );
    assert_eq!(s["release"]["switched"], true);
    let second = live(&env);
    assert_ne!(second, first);
    assert_eq!(s["release"]["previous"]["id"], first.as_str(), "{s}");
    assert_eq!(
        ino(&env.local.join("sub/keep.txt")),
        old_keep,
        "unchanged file is linked"
    );
    let t = tree(&env.local);
    assert_eq!(
        (t["model.bin"].as_slice(), t["labels.txt"].as_slice()),
        (&b"model v2"[..], &b"labels v2"[..])
    );
    // The previous release is untouched.
    let old = tree(&releases_dir(&env).join(&first));
    assert_eq!(old["model.bin"], b"model v1");

    // A deleted object is simply absent from the next release; keep = 2 removes the oldest.
    env.stack
        .s3
        .delete_object(env.bucket(), "r/labels.txt")
        .unwrap();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["deleted"], 1, "{s}");
    let third = live(&env);
    assert!(!tree(&env.local).contains_key("labels.txt"));
    assert_eq!(release_ids(&env), [second.clone(), third.clone()]);
    assert!(!releases_dir(&env).join(format!("{first}.json")).exists());
    assert!(tree(&releases_dir(&env).join(&second)).contains_key("labels.txt"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_file_is_downloaded_again_not_linked_forward() {
    let env = Env::default().await;
    env.put("r/a.txt", "alpha").await;
    env.put("r/b.txt", "bravo").await;
    let cfg = env.write_config(&env.config("r/", with_releases(3)));
    run_async(once_args(&cfg)).await.assert_ok();
    let first = live(&env);

    // Someone makes a file writable and edits it in the live release.
    let edited = env.local.join("a.txt");
    std::fs::set_permissions(&edited, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&edited, "tampered!").unwrap();
    let tampered_ino = ino(&edited);
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert_eq!(s["release"]["switched"], true, "{s}");
    assert_ne!(live(&env), first);
    let t = tree(&env.local);
    assert_eq!(t["a.txt"], b"alpha", "the next release is exact");
    assert_ne!(
        ino(&env.local.join("a.txt")),
        tampered_ino,
        "the edited file is not linked"
    );
    assert_eq!(
        ino(&env.local.join("b.txt")),
        ino(&releases_dir(&env).join(&first).join("b.txt"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_pass_never_switches_and_the_next_pass_reuses_what_was_staged() {
    let env = Env::default().await;
    env.put("r/model.bin", "model v1").await;
    env.put("r/labels.txt", "labels v1").await;
    let cfg = env.write_config(&env.config("r/", with_releases(3)));
    run_async(once_args(&cfg)).await.assert_ok();
    let first = live(&env);

    env.put("r/model.bin", "model v2").await;
    env.put("r/labels.txt", "labels v2").await;
    // AccessDenied is not retried: two answers (the lean GET's, then the SDK's it hands the
    // request to) fail the object for this pass.
    env.stack
        .s3
        .inject("r/labels.txt", Fault::Status("AccessDenied"), 2);
    let run = run_async(once_args(&cfg)).await;
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let s = run.summary();
    assert_eq!(s["failed"], 1, "{s}");
    assert_eq!(s["release"]["switched"], false, "{s}");
    assert!(
        s["release"]["pending"]
            .as_str()
            .unwrap()
            .contains("1 object(s) failed"),
        "{s}"
    );
    assert_eq!(live(&env), first, "the live release stays");
    assert_eq!(
        tree(&env.local)["model.bin"],
        b"model v1",
        "no mix of v1 and v2"
    );
    assert!(releases_dir(&env).join(".staging/model.bin").exists());

    // The fault is over: the staged model is not fetched again; the set switches whole.
    let gets = env.stack.s3.get_count();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert_eq!(env.stack.s3.get_count() - gets, 1);
    assert_eq!(s["release"]["switched"], true, "{s}");
    let t = tree(&env.local);
    assert_eq!(
        (t["model.bin"].as_slice(), t["labels.txt"].as_slice()),
        (&b"model v2"[..], &b"labels v2"[..])
    );
}

/// Every file of release `n`: the same set of paths, each naming `n`, of varied sizes.
const SET: [&str; 4] = [
    "model.bin",
    "labels.txt",
    "cfg/site.json",
    "cfg/deep/t.html",
];

fn body(n: u64, path: &str) -> Vec<u8> {
    let mut b = format!("{n}\n{path}\n").into_bytes();
    let extra = (n as usize * 977 + path.len() * 131) % 20_000;
    b.extend(std::iter::repeat_n(b'.', extra));
    b
}

async fn publish(env: &Env, prefix: &str, n: u64) {
    for p in SET {
        env.put(&format!("{prefix}{p}"), body(n, p)).await;
    }
}

/// Reads the whole tree the way docs/releases.md tells readers to: open `localDir/` once and
/// read relative to it. Returns the release number every file names, or what was wrong.
fn snapshot(local: &Path) -> Result<Option<u64>, String> {
    let Ok(dir) = std::fs::File::open(local) else {
        return Ok(None); // before the first release
    };
    let base = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir));
    let mut seen = None;
    for p in SET {
        let data = std::fs::read(format!("{base}/{p}")).map_err(|e| format!("{p}: {e}"))?;
        let n: u64 = String::from_utf8_lossy(&data)
            .lines()
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| format!("{p}: unreadable"))?;
        if data != body(n, p) {
            return Err(format!("{p}: not the whole body of release {n}"));
        }
        match seen {
            None => seen = Some(n),
            Some(m) if m == n => {}
            Some(m) => return Err(format!("{p} is from release {n}, another file from {m}")),
        }
    }
    let extra = tree(local).len();
    if extra != SET.len() {
        return Err(format!("{extra} files, expected {}", SET.len()));
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_sees_exactly_one_release_across_fifty_switches() {
    let env = Env::default().await;
    let cfg = env.write_config(&env.config("r/", with_releases(3)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (local, stop) = (env.local.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut snapshots, mut releases) = (0u64, std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match snapshot(&local) {
                    Ok(Some(n)) => {
                        snapshots += 1;
                        releases.insert(n);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok((snapshots, releases))
        })
    };
    const SWITCHES: u64 = 50;
    for n in 1..=SWITCHES {
        publish(&env, "r/", n).await;
        let s = run_async(once_args(&cfg)).await.assert_ok();
        assert_eq!(s["release"]["switched"], true, "pass {n}: {s}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (snapshots, releases) = reader
        .join()
        .unwrap()
        .expect("every snapshot is one release");
    assert_eq!(snapshot(&env.local).unwrap(), Some(SWITCHES));
    // The reader really read while releases switched under it.
    assert!(
        releases.len() >= 10,
        "reader saw {} releases in {snapshots} snapshots",
        releases.len()
    );
    assert!(release_ids(&env).len() <= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_building_or_switching_leaves_a_complete_release() {
    let env = Env::default().await;
    let cfg = env.write_config(&env.config("r/", |m| {
        m.insert("releases".into(), json!({ "keep": 2 }));
        m.insert("maxConcurrency".into(), json!(2));
    }));
    publish(&env, "r/", 0).await;
    run_async(once_args(&cfg)).await.assert_ok();
    // Slow enough that kills land in downloading, sealing and switching alike.
    env.stack
        .s3
        .set_get_delay(std::time::Duration::from_millis(15));
    publish(&env, "r/", 1).await;
    #[allow(clippy::disallowed_methods)] // the real binary's real pass sets the kill times
    let timed = std::time::Instant::now();
    run_async(once_args(&cfg)).await.assert_ok();
    let pass = timed.elapsed();
    const RUNS: u64 = 24;
    let mut outcomes = std::collections::BTreeMap::<&str, u32>::new();
    for k in 2..=RUNS + 1 {
        let before = snapshot(&env.local).unwrap().expect("a live release");
        publish(&env, "r/", k).await;
        let mut child = common::spawn_once(&cfg);
        let at = pass.mul_f64(fastrand::f64() * 1.5);
        tokio::time::sleep(at).await;
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let after =
            snapshot(&env.local).unwrap_or_else(|e| panic!("run {k}, killed at {at:?}: {e}"));
        let after = after.expect("localDir still resolves");
        assert!(
            after == before || after == k,
            "run {k}: release {after}, expected {before} or {k}"
        );
        *outcomes
            .entry(if after == k { "new" } else { "old" })
            .or_default() += 1;
    }
    // Whatever was left, the next pass completes and switches to the newest content.
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(snapshot(&env.local).unwrap(), Some(RUNS + 1), "{s}");
    assert!(!releases_dir(&env).join(".staging").exists());
    assert!(release_ids(&env).len() <= 2, "{:?}", release_ids(&env));
    eprintln!("kill -9 outcomes over {RUNS} runs (pass {pass:?}): {outcomes:?}");
}

fn cli(args: &[&str]) -> common::Run {
    common::run(args)
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_by_command_holds_until_the_content_changes() {
    let env = Env::default().await;
    let cfg = env.write_config(&env.config("r/", with_releases(3)));
    let cfg_s = cfg.to_str().unwrap();
    publish(&env, "r/", 1).await;
    run_async(once_args(&cfg)).await.assert_ok();
    let first = live(&env);
    publish(&env, "r/", 2).await;
    run_async(once_args(&cfg)).await.assert_ok();
    let second = live(&env);

    let listed = cli(&["releases", "--json", "--config", cfg_s]);
    assert_eq!(listed.code(), Some(0), "{}", listed.stderr());
    let list: Value = serde_json::from_str(&listed.stdout()).unwrap();
    // Nothing before the first release: said so, nothing moves.
    let lonely = Env::default().await;
    lonely.put("r/x.txt", "x").await;
    let lonely_cfg = lonely.write_config(&lonely.config("r/", with_releases(3)));
    run_async(once_args(&lonely_cfg)).await.assert_ok();
    let r = cli(&["rollback", "--config", lonely_cfg.to_str().unwrap()]);
    assert_eq!(r.code(), Some(1));
    assert!(
        r.stderr().contains("nothing to roll back to"),
        "{}",
        r.stderr()
    );
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[1]["id"], second.as_str());
    assert_eq!(list[1]["live"], true);
    assert_eq!(list[0]["files"], SET.len() as u64);

    let r = cli(&["rollback", "--config", cfg_s]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(
        r.stdout().contains(&format!("{second} -> {first}")),
        "{}",
        r.stdout()
    );
    assert_eq!(live(&env), first);
    assert_eq!(snapshot(&env.local).unwrap(), Some(1));

    // S3 still holds release 2's content: passes keep the rollback.
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["release"]["switched"], false, "{s}");
    assert!(
        s["release"]["pending"]
            .as_str()
            .unwrap()
            .contains("rolled back"),
        "{s}"
    );
    assert_eq!(s["release"]["live"]["id"], first.as_str(), "{s}");
    let gets = env.stack.s3.get_count();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["release"]["switched"], false, "{s}");
    assert_eq!(
        env.stack.s3.get_count(),
        gets,
        "a held pass fetches nothing again"
    );
    assert_eq!(snapshot(&env.local).unwrap(), Some(1));

    // New content ends the hold.
    publish(&env, "r/", 3).await;
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["release"]["switched"], true, "{s}");
    assert_eq!(snapshot(&env.local).unwrap(), Some(3));

    // By id; an unknown id names what is kept.
    let r = cli(&["rollback", "--config", cfg_s, "--to", &second]);
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(snapshot(&env.local).unwrap(), Some(2));
    let r = cli(&["rollback", "--config", cfg_s, "--to", "000099-tdead"]);
    assert_eq!(r.code(), Some(1));
    assert!(
        r.stderr().contains("not kept") && r.stderr().contains(&first),
        "{}",
        r.stderr()
    );
    assert_eq!(snapshot(&env.local).unwrap(), Some(2));
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn versioned_env(policy: impl FnOnce(&str) -> devstack::Policy) -> Env {
    let mut o = devstack::Options::default();
    o.policy = policy(&o.bucket);
    Env::start(o).await
}

fn pinned(key: &str, version: &str, data: &[u8]) -> Value {
    json!({"key": key, "versionId": version, "sha256": sha256(data), "size": data.len()})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_manifest_is_the_release_and_an_older_one_rolls_back() {
    let env = versioned_env(devstack::Policy::read_versions).await;
    let s3 = &env.stack.s3;
    let b = env.bucket().to_owned();
    let m1 = s3
        .put_object_version(&b, "p/model.bin", "model one")
        .await
        .unwrap();
    let l1 = s3
        .put_object_version(&b, "p/labels.txt", "labels one")
        .await
        .unwrap();
    let m2 = s3
        .put_object_version(&b, "p/model.bin", "model two!")
        .await
        .unwrap();
    let l2 = s3
        .put_object_version(&b, "p/labels.txt", "labels two")
        .await
        .unwrap();
    let v1 = json!([
        pinned("p/model.bin", &m1, b"model one"),
        pinned("p/labels.txt", &l1, b"labels one")
    ]);
    let v2 = json!([
        pinned("p/model.bin", &m2, b"model two!"),
        pinned("p/labels.txt", &l2, b"labels two")
    ]);
    env.put("manifests/current.json", v1.to_string()).await;
    let cfg = env.write_config(&env.config("p/", |m| {
        m.insert("releases".into(), json!({"keep": 5}));
        m.insert("manifestKey".into(), json!("manifests/current.json"));
    }));

    // The exact versions, although newer ones are current.
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 2, "{s}");
    let t = tree(&env.local);
    assert_eq!(
        (t["model.bin"].as_slice(), t["labels.txt"].as_slice()),
        (&b"model one"[..], &b"labels one"[..])
    );
    let first = live(&env);
    let manifest_part = &sha256(v1.to_string().as_bytes())[..12];
    assert!(
        first.ends_with(&format!("-m{manifest_part}")),
        "{first}: the id names the manifest's digest"
    );

    // Nothing changed: only the manifest's conditional GET, no object request at all.
    let gets = s3.get_count();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(
        (s["unchanged"].as_u64(), s["release"]["switched"].as_bool()),
        (Some(2), Some(false)),
        "{s}"
    );
    assert_eq!(s3.get_count() - gets, 1);

    env.put("manifests/current.json", v2.to_string()).await;
    run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(tree(&env.local)["model.bin"], b"model two!");
    let second = live(&env);

    // A wrong digest fails the release; nothing switches.
    let mut bad = v1.clone();
    bad[0]["sha256"] = json!(sha256(b"something else"));
    env.put("manifests/current.json", bad.to_string()).await;
    let run = run_async(once_args(&cfg)).await;
    assert_eq!(run.code(), Some(1));
    let s = run.summary();
    assert_eq!(s["failures"][0]["code"], "ChecksumMismatch", "{s}");
    assert!(
        s["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("SHA-256"),
        "{s}"
    );
    assert_eq!(s["release"]["switched"], false);
    assert_eq!(live(&env), second);

    // Publishing the older manifest rolls back to its bytes, under an id with its digest.
    env.put("manifests/current.json", v1.to_string()).await;
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["release"]["switched"], true, "{s}");
    let t = tree(&env.local);
    assert_eq!(
        (t["model.bin"].as_slice(), t["labels.txt"].as_slice()),
        (&b"model one"[..], &b"labels one"[..])
    );
    assert!(live(&env).ends_with(&format!("-m{manifest_part}")));
    let listed: Value = serde_json::from_str(
        &cli(&["releases", "--json", "--config", cfg.to_str().unwrap()]).stdout(),
    )
    .unwrap();
    let digests: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["treeDigest"])
        .collect();
    assert_eq!(
        digests.first(),
        digests.last(),
        "same manifest, same tree digest: {listed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_version_needs_get_object_version_and_must_exist() {
    // The default policy has s3:GetObject and s3:ListBucket only.
    let env = versioned_env(devstack::Policy::read_bucket).await;
    let b = env.bucket().to_owned();
    let m1 = env
        .stack
        .s3
        .put_object_version(&b, "p/model.bin", "model one")
        .await
        .unwrap();
    env.put(
        "manifests/m.json",
        json!([pinned("p/model.bin", &m1, b"model one")]).to_string(),
    )
    .await;
    let cfg = env.write_config(&env.config("p/", |m| {
        m.insert("releases".into(), json!({"keep": 2}));
        m.insert("manifestKey".into(), json!("manifests/m.json"));
    }));
    let run = run_async(once_args(&cfg)).await;
    assert_eq!(run.code(), Some(1));
    let s = run.summary();
    assert_eq!(s["failures"][0]["code"], "GetObjectVersionDenied", "{s}");
    assert!(
        s["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("s3:GetObjectVersion"),
        "{s}"
    );
    assert!(
        std::fs::symlink_metadata(&env.local).is_err(),
        "no release without every object"
    );

    let env = versioned_env(devstack::Policy::read_versions).await;
    env.put(
        "manifests/m.json",
        json!([pinned(
            "p/model.bin",
            "NoSuchVersionAtAllXXXXXXXXXXXXXX",
            b"x"
        )])
        .to_string(),
    )
    .await;
    let cfg = env.write_config(&env.config("p/", |m| {
        m.insert("releases".into(), json!({"keep": 2}));
        m.insert("manifestKey".into(), json!("manifests/m.json"));
    }));
    let s = run_async(once_args(&cfg)).await.summary();
    assert_eq!(s["failures"][0]["code"], "NoSuchVersion", "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_runs_write_nothing_leftovers_stay_out_and_a_removed_release_is_rebuilt() {
    let env = Env::default().await;
    env.put("r/a.txt", "alpha").await;
    env.put("r/b.txt", "bravo").await;
    let cfg = env.write_config(&env.config("r/", with_releases(2)));
    let dry = |cfg: &Path| {
        let mut a = once_args(cfg);
        a.push("--dry-run".into());
        a
    };
    // Before anything: a dry run creates neither the releases folder nor localDir.
    let s = run_async(dry(&cfg)).await.assert_ok();
    assert_eq!(s["planned"].as_array().unwrap().len(), 2, "{s}");
    assert!(!releases_dir(&env).exists());
    assert!(std::fs::symlink_metadata(&env.local).is_err());
    // So do the commands.
    let listed = cli(&["releases", "--json", "--config", cfg.to_str().unwrap()]);
    assert_eq!(
        (listed.code(), listed.stdout().trim()),
        (Some(0), "[]"),
        "{}",
        listed.stderr()
    );
    let r = cli(&["rollback", "--config", cfg.to_str().unwrap()]);
    assert!(
        r.stderr().contains("no release is live yet"),
        "{}",
        r.stderr()
    );
    assert!(
        !releases_dir(&env).exists() && !env.local.parent().unwrap().join(".local.switch").exists()
    );

    run_async(once_args(&cfg)).await.assert_ok();
    let first = live(&env);
    env.put("r/a.txt", "ALPHA").await;
    let s = run_async(dry(&cfg)).await.assert_ok();
    assert_eq!(s["planned"][0]["action"], "download", "{s}");
    assert!(
        !releases_dir(&env).join(".staging").exists(),
        "a dry run stages nothing"
    );
    assert_eq!(live(&env), first);

    // A failed pass leaves a staging folder; a crash's temporary file in it never reaches
    // the release.
    env.stack
        .s3
        .inject("r/a.txt", Fault::Status("AccessDenied"), 2); // lean GET, then the SDK
    assert_eq!(run_async(once_args(&cfg)).await.code(), Some(1));
    let leftover = releases_dir(&env).join(".staging/.gg-s3-sync.0123456789abcdef.tmp");
    std::fs::write(&leftover, b"half a file").unwrap();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["release"]["switched"], true, "{s}");
    assert_eq!(tree(&env.local).len(), 2, "{:?}", tree(&env.local).keys());

    // Someone removes the live release's folder: the next pass builds a new one.
    let gone = live(&env);
    std::fs::remove_file(releases_dir(&env).join(format!("{gone}.json"))).unwrap();
    let mut perms = std::fs::metadata(releases_dir(&env).join(&gone))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::remove_dir_all(releases_dir(&env).join(&gone)).unwrap();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["release"]["switched"], true, "{s}");
    assert_ne!(live(&env), gone);
    assert_eq!(tree(&env.local)["a.txt"], b"ALPHA");

    // A kill during retention leaves a kept release without its record (the record goes
    // first): the next pass finishes removing it, and never offers it for rollback.
    let ids = release_ids(&env);
    let half = ids
        .iter()
        .find(|i| **i != live(&env))
        .expect("a kept release")
        .clone();
    std::fs::remove_file(releases_dir(&env).join(format!("{half}.json"))).unwrap();
    run_async(once_args(&cfg)).await.assert_ok();
    assert!(
        !releases_dir(&env).join(&half).exists(),
        "{:?}",
        release_ids(&env)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn turning_releases_on_adopts_the_folder_without_a_moment_of_no_local_dir() {
    let env = Env::default().await;
    env.put("r/a.txt", "alpha").await;
    env.put("r/b/c.txt", "charlie").await;
    let plain = env.write_config(&env.config("r/", |_| {}));
    run_async(once_args(&plain)).await.assert_ok();
    let before = ino(&env.local.join("b/c.txt"));
    std::fs::write(env.local.join("mine.txt"), b"a file the user put there").unwrap();

    let cfg = env.write_config(&env.config("r/", with_releases(2)));
    let gets = env.stack.s3.get_count();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["release"]["switched"], true, "{s}");
    assert_eq!(
        env.stack.s3.get_count(),
        gets,
        "synced files are linked, not fetched again"
    );
    assert!(std::fs::symlink_metadata(&env.local)
        .unwrap()
        .file_type()
        .is_symlink());
    let t = tree(&env.local);
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        ["a.txt", "b/c.txt"],
        "exactly the objects"
    );
    assert_eq!(ino(&env.local.join("b/c.txt")), before);
    // The old folder, with the user's file, is kept beside the releases.
    let adopted: Vec<PathBuf> = std::fs::read_dir(releases_dir(&env))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("adopted-")
        })
        .collect();
    assert_eq!(adopted.len(), 1);
    assert_eq!(
        std::fs::read(adopted[0].join("mine.txt")).unwrap(),
        b"a file the user put there"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_releases_folder_on_another_file_system_is_refused_with_the_fix() {
    let env = Env::default().await;
    env.put("r/a.txt", "alpha").await;
    let shm = Path::new("/dev/shm");
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    if !shm.is_dir() || dev(shm) == dev(env.tmp.path()) {
        eprintln!("skipped: no second file system at /dev/shm here");
        return;
    }
    let elsewhere = shm.join(format!("gg-s3-sync-rel-{}", fastrand::u32(..)));
    let cfg = env.write_config(&env.config("r/", |m| {
        m.insert("releases".into(), json!({"keep": 2, "dir": elsewhere}));
    }));
    let run = run_async(once_args(&cfg)).await;
    let _ = std::fs::remove_dir_all(&elsewhere);
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let err = run.stderr();
    assert!(
        err.contains("releases.dir") && err.contains("ReleasesDirInvalid"),
        "{err}"
    );
    assert!(
        std::fs::symlink_metadata(&env.local).is_err(),
        "nothing synced half-way"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_keys_a_pass_of_304s_creates_nothing_and_a_change_switches() {
    let env = Env::default().await;
    env.put("k/a.txt", "alpha").await;
    env.put("k/b.txt", "bravo").await;
    let cfg = env.write_config(&env.config("k/", |m| {
        m.insert("releases".into(), json!({"keep": 2}));
        m.insert("keys".into(), json!(["k/a.txt", "k/b.txt"]));
    }));
    let debug_run = |cfg: &Path| {
        std::process::Command::new(common::bin())
            .args(once_args(cfg))
            .env("RUST_LOG", "gg_s3_sync=debug")
            .output()
            .unwrap()
    };
    run_async(once_args(&cfg)).await.assert_ok();
    let first = live(&env);
    let out = tokio::task::block_in_place(|| debug_run(&cfg));
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains("staging:"),
        "a pass of 304s made a staging folder:\n{log}"
    );
    assert_eq!(live(&env), first);
    assert_eq!(release_ids(&env), vec![first.clone()]);

    env.put("k/b.txt", "BRAVO").await;
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(
        (s["downloaded"].as_u64(), s["unchanged"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["release"]["switched"], true, "{s}");
    let t = tree(&env.local);
    assert_eq!(
        (t["a.txt"].as_slice(), t["b.txt"].as_slice()),
        (&b"alpha"[..], &b"BRAVO"[..])
    );
    assert_eq!(
        ino(&env.local.join("a.txt")),
        ino(&releases_dir(&env).join(&first).join("a.txt")),
        "the 304 object is linked from the previous release"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_with_nothing_to_do_writes_nothing_beside_local_dir() {
    let env = Env::default().await;
    env.put("r/a.txt", "alpha").await;
    let cfg = env.write_config(&env.config("r/", with_releases(2)));
    run_async(once_args(&cfg)).await.assert_ok();
    let stamp = |p: &Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
    };
    let (dir, parent) = (releases_dir(&env), env.local.parent().unwrap().to_owned());
    let before = (
        stamp(&dir),
        stamp(&parent),
        stamp(&env.local),
        stamp(&env.state),
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["release"]["switched"], false, "{s}");
    assert_eq!(
        (
            stamp(&dir),
            stamp(&parent),
            stamp(&env.local),
            stamp(&env.state)
        ),
        before,
        "the releases folder, localDir's folder, the link and the state folder are untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn turning_releases_off_keeps_syncing_through_the_link() {
    let env = Env::default().await;
    env.put("r/a.txt", "v1").await;
    let on = env.write_config(&env.config("r/", with_releases(2)));
    run_async(once_args(&on)).await.assert_ok();
    let release = live(&env);
    // Off again: localDir is still the link to the last release; passes sync through it (it
    // is the folder the user's path names) instead of failing on the link.
    env.put("r/a.txt", "v2").await;
    let off = env.write_config(&env.config("r/", |_| {}));
    let s = run_async(once_args(&off)).await.assert_ok();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert_eq!(std::fs::read(env.local.join("a.txt")).unwrap(), b"v2");
    assert_eq!(live(&env), release);
    let r = cli(&["releases", "--config", off.to_str().unwrap()]);
    assert_eq!(r.code(), Some(1));
    assert!(
        r.stderr().contains("releases are off") && r.stderr().contains("ReleasesOff"),
        "{}",
        r.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn at_start_a_lowered_keep_and_a_staging_folder_built_on_another_release_are_cleaned() {
    let env = Env::default().await;
    let cfg = env.write_config(&env.config("r/", with_releases(3)));
    for n in 1..=3 {
        publish(&env, "r/", n).await;
        run_async(once_args(&cfg)).await.assert_ok();
    }
    assert_eq!(release_ids(&env).len(), 3);
    // A failed pass leaves a staging folder; then its base no longer is the live release (as
    // after the link was pointed elsewhere by hand).
    publish(&env, "r/", 4).await;
    env.stack
        .s3
        .inject("r/model.bin", Fault::Status("AccessDenied"), 2); // lean GET, then the SDK
    assert_eq!(run_async(once_args(&cfg)).await.code(), Some(1));
    let staging = releases_dir(&env).join(".staging");
    assert!(staging.exists());
    std::fs::write(releases_dir(&env).join(".staging.base"), "000001-tdeadbeef").unwrap();
    // keep lowered to 1, nothing new to fetch beyond release 4's objects.
    let one = env.write_config(&env.config("r/", with_releases(1)));
    let s = run_async(once_args(&one)).await.assert_ok();
    assert_eq!(s["release"]["switched"], true, "{s}");
    assert_eq!(
        release_ids(&env),
        vec![live(&env)],
        "only the live release is kept"
    );
    assert!(!staging.exists());
    assert_eq!(snapshot(&env.local).unwrap(), Some(4));
    // The abandoned staging folder's downloads were not reused: all four objects fetched.
    assert_eq!(s["downloaded"], SET.len() as u64, "{s}");
}
