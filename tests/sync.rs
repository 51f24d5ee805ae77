//! End-to-end: the real `gg-s3-sync` binary against the devstack (mTLS credentials provider →
//! session credentials → SigV4-verified, policy-enforcing S3).

mod common;

use std::time::Duration;

use common::{noise, once_args, run_async, tree, Env};
use devstack::{Options, Policy};

#[tokio::test(flavor = "multi_thread")]
async fn full_sync_then_noop_then_changed_object() {
    let env = Env::default().await;
    env.put("data/a.txt", "alpha").await;
    env.put("data/sub/dir/b.bin", noise(300_000, 1)).await;
    env.put("data/unicode-ñ/файл.txt", "unicode").await;
    env.put("other/not-synced.txt", "outside the prefix").await;

    let cfg = env.write_config(&env.config("data/", |_| {}));
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 3, "{s}");
    assert_eq!(s["failed"], 0);
    let t = tree(&env.local);
    assert_eq!(t.len(), 3, "{:?}", t.keys());
    assert_eq!(t["a.txt"], b"alpha");
    assert_eq!(t["sub/dir/b.bin"], noise(300_000, 1));
    assert_eq!(t["unicode-ñ/файл.txt"], b"unicode");

    // Re-sync: nothing downloaded, no GET issued (only the listing).
    let gets = env.stack.s3.get_count();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(
        (s["downloaded"].as_u64(), s["unchanged"].as_u64()),
        (Some(0), Some(3)),
        "{s}"
    );
    assert_eq!(
        env.stack.s3.get_count(),
        gets,
        "a no-op sync must not GET objects"
    );

    // Same size, different content: detected by ETag (aws-cli's size+mtime check misses this).
    env.put("data/a.txt", "ALPHA").await;
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(
        (s["downloaded"].as_u64(), s["unchanged"].as_u64()),
        (Some(1), Some(2)),
        "{s}"
    );
    assert_eq!(std::fs::read(env.local.join("a.txt")).unwrap(), b"ALPHA");

    // A local file deleted by someone else is restored; one edited is replaced.
    std::fs::remove_file(env.local.join("unicode-ñ/файл.txt")).unwrap();
    std::fs::write(env.local.join("sub/dir/b.bin"), b"tampered").unwrap();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 2, "{s}");
    assert_eq!(tree(&env.local)["sub/dir/b.bin"], noise(300_000, 1));
    assert_eq!(tree(&env.local)["unicode-ñ/файл.txt"], b"unicode");
}

#[tokio::test(flavor = "multi_thread")]
async fn paginated_listing_and_concurrency() {
    let env = Env::default().await;
    for i in 0..1_205 {
        env.put(
            &format!("many/{:04}/f.txt", i),
            format!("object {i}").as_str(),
        )
        .await;
    }
    let s = env
        .once_with("many", |m| {
            m.insert("maxConcurrency".into(), "16".into());
        })
        .await
        .assert_ok();
    assert_eq!(s["listed"], 1205, "{s}");
    assert_eq!(s["downloaded"], 1205);
    assert_eq!(
        env.stack.s3.list_count(),
        2,
        "1205 keys take two pages of 1000"
    );
    let t = tree(&env.local);
    assert_eq!(t.len(), 1205);
    assert_eq!(t["0777/f.txt"], b"object 777");
}

/// The next listing page is requested as soon as the current one arrives, while its objects
/// download: listing and downloading overlap instead of taking turns (each page's LIST used to
/// wait until its last download had started).
#[tokio::test(flavor = "multi_thread")]
async fn the_next_page_is_listed_while_this_page_downloads() {
    let env = Env::default().await;
    for i in 0..1_010 {
        env.stack.s3.put_virtual_object(
            env.bucket(),
            &format!("pp/{i:04}.txt"),
            format!("object {i}").into_bytes(),
        );
    }
    env.stack.s3.set_get_delay(Duration::from_millis(40));
    let cfg = env.write_config(&env.config("pp/", |m| {
        m.insert("maxConcurrency".into(), "16".into());
    }));
    let (lists, gets) = (env.stack.s3.list_count(), env.stack.s3.get_count());
    let mut child = common::spawn_once(&cfg);
    // When the second page is requested, how many GETs of the first had been made?
    let mut at_second_list = None;
    for _ in 0..3_000 {
        if env.stack.s3.list_count() - lists >= 2 {
            at_second_list = Some(env.stack.s3.get_count() - gets);
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(tokio::task::block_in_place(|| child.wait())
        .unwrap()
        .success());
    let got = at_second_list.expect("a second page was listed");
    assert!(
        got < 200,
        "the second page was listed only after {got} of the first page's 1000 GETs"
    );
    assert_eq!(tree(&env.local).len(), 1_010);
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_are_bounded_by_max_concurrency() {
    let env = Env::default().await;
    for i in 0..30 {
        env.put(&format!("c/{i:02}"), noise(64 * 1024, i)).await;
    }
    env.stack.s3.set_chunk_delay(Duration::from_millis(2));
    let s = env
        .once_with("c/", |m| {
            m.insert("maxConcurrency".into(), "3".into());
        })
        .await
        .assert_ok();
    assert_eq!(s["downloaded"], 30, "{s}");
    let peak = env.stack.s3.max_concurrent_gets();
    assert!(
        peak <= 3,
        "at most maxConcurrency bodies in flight, saw {peak}"
    );
    assert!(peak >= 2, "downloads run concurrently, saw {peak}");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_object_only_policy_in_prefix_mode_names_list_bucket() {
    let o = Options::default();
    let env = Env::start(Options {
        policy: Policy::get_only(&o.bucket),
        ..o
    })
    .await;
    env.put("data/a.txt", "a").await;
    let cfg = env.write_config(&env.config("data/", |_| {}));
    let r = run_async(vec![
        "once".into(),
        "--config".into(),
        cfg.display().to_string(),
    ])
    .await;
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("s3:ListBucket"), "{err}");
    assert!(
        err.contains(&format!("arn:aws:s3:::{}", env.bucket())),
        "{err}"
    );
    assert!(err.contains("AccessDenied"), "{err}");
    assert!(tree(&env.local).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_credentials_are_refreshed_ahead_during_a_long_sync() {
    let env = Env::start(Options {
        credential_duration: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    for i in 0..24 {
        env.put(&format!("slow/{i:02}"), noise(1000, i)).await;
    }
    env.stack.s3.set_get_delay(Duration::from_millis(200));
    let s = env
        .once_with("slow/", |m| {
            m.insert("maxConcurrency".into(), "2".into());
        })
        .await
        .assert_ok();
    assert_eq!(s["downloaded"], 24, "{s}");
    let stats = env.stack.account.stats();
    assert!(
        stats.credentials_issued >= 2,
        "the ~2.4 s sync must outlive the 2 s credentials: {stats:?}"
    );
    assert_eq!(
        stats.s3_expired_token, 0,
        "credentials must be renewed before they expire: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_expired_by_the_server_mid_sync_are_replaced_transparently() {
    let env = Env::default().await;
    for i in 0..20 {
        env.put(&format!("exp/{i:02}"), noise(500, i)).await;
    }
    env.stack.s3.set_get_delay(Duration::from_millis(100));
    let cfg = env.write_config(&env.config("exp/", |m| {
        m.insert("maxConcurrency".into(), "1".into());
    }));
    let args = once_args(&cfg);
    let child = tokio::spawn(run_async(args));
    // Once downloads are under way, the server expires every session (as a wrong clock would).
    while env.stack.s3.get_count() < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.stack.account.expire_all_sessions();
    let s = child.await.unwrap().assert_ok();
    assert_eq!(s["downloaded"], 20, "{s}");
    let stats = env.stack.account.stats();
    assert!(stats.s3_expired_token >= 1, "{stats:?}");
    assert!(stats.credentials_issued >= 2, "{stats:?}");
    assert_eq!(tree(&env.local).len(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_keys_never_escape_local_dir() {
    let env = Env::default().await;
    let s3 = &env.stack.s3;
    let b = env.bucket();
    env.put("p/ok.txt", "fine").await;
    for key in [
        "p/../escape-1",
        "p/a/../../escape-2",
        "p//abs-escape",
        "p/a//b",
        "p/./dot",
        "p/a/./b",
        "p/..",
        "p/a\\..\\..\\escape-3",
        "p/tab\there",
        "p/not-empty-folder/",
        &format!("p/{}", "n".repeat(256)),
    ] {
        s3.put_virtual_object(b, key, b"pwned".to_vec());
    }
    s3.put_virtual_object(b, "p/folder-marker/", Vec::new());
    let r = env.once("p/");
    let s = r.assert_ok();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert_eq!(s["skipped"], 11, "{s}");
    assert_eq!(s["folderMarkers"], 1, "{s}");
    let skipped: Vec<String> = s["skippedKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_owned())
        .collect();
    assert!(skipped.contains(&"p/../escape-1".to_owned()), "{skipped:?}");
    // Nothing was written anywhere but localDir/ok.txt.
    assert_eq!(tree(&env.local).keys().collect::<Vec<_>>(), ["ok.txt"]);
    for name in ["escape-1", "escape-2", "escape-3", "abs-escape"] {
        assert!(!env.tmp.path().join(name).exists(), "{name} escaped");
        assert!(
            !std::path::Path::new("/").join(name).exists(),
            "{name} escaped to /"
        );
    }
    assert!(
        r.stderr().contains("skipping unsafe object key"),
        "{}",
        r.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_planted_in_local_dir_are_not_followed() {
    let env = Env::default().await;
    env.put("p/link/inside.txt", "x").await;
    env.put("p/plain.txt", "y").await;
    let outside = env.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&env.local).unwrap();
    std::os::unix::fs::symlink(&outside, env.local.join("link")).unwrap();
    let r = env.once("p/");
    assert_eq!(
        r.code(),
        Some(1),
        "a refused object is a failed object: {}",
        r.stderr()
    );
    let s = r.summary();
    assert_eq!(
        (s["downloaded"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert!(
        s["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("symlink"),
        "{s}"
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through the symlink"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn file_folder_conflicts_and_unicode_normal_forms_have_documented_outcomes() {
    let env = Env::default().await;
    // 'a' and 'a/b': one path cannot be a file and a folder. One object wins, the other is
    // reported as a conflict; nothing is overwritten.
    env.put("u/a", "file a").await;
    // s3s-fs stores objects as files, so it cannot hold both; serve one from memory.
    env.stack
        .s3
        .put_virtual_object(env.bucket(), "u/a/b", b"file b".to_vec());
    // NFC and NFD spellings of "café" are different byte strings, hence two files on Linux.
    env.put("u/caf\u{e9}.txt", "nfc").await;
    env.put("u/cafe\u{301}.txt", "nfd").await;
    let r = env
        .once_with("u/", |m| {
            m.insert("maxConcurrency".into(), "1".into());
        })
        .await;
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let s = r.summary();
    assert_eq!(
        (s["downloaded"].as_u64(), s["failed"].as_u64()),
        (Some(3), Some(1)),
        "{s}"
    );
    let msg = s["failures"][0]["message"].as_str().unwrap();
    assert!(msg.contains("but the object needs a"), "{msg}");
    let t = tree(&env.local);
    assert_eq!(t["caf\u{e9}.txt"], b"nfc");
    assert_eq!(t["cafe\u{301}.txt"], b"nfd");
    assert!(t.get("a") == Some(&b"file a".to_vec()) || t.get("a/b") == Some(&b"file b".to_vec()));
}

#[tokio::test(flavor = "multi_thread")]
async fn bandwidth_limit_holds_across_concurrent_downloads() {
    let env = Env::default().await;
    for i in 0..3 {
        env.put(&format!("bw/{i}"), noise(100_000, i)).await;
    }
    let s = env
        .once_with("bw/", |m| {
            m.insert("bandwidthLimitBytesPerSec".into(), "100000".into());
            m.insert("maxConcurrency".into(), "3".into());
        })
        .await
        .assert_ok();
    assert_eq!(s["downloaded"], 3);
    // 300 kB at 100 kB/s (250 ms burst allowed) cannot finish in under ~2.75 s. This bounds the
    // limiter from below only; how fast it goes unlimited is a benchmark's business.
    assert!(s["durationMs"].as_u64().unwrap() >= 2_500, "{s}");
}

/// A key with a character XML 1.0 cannot carry (here U+0001) used to make every listing
/// unreadable ("ListObjectsV2 … failed: Unknown"): nothing synced, every pass. Listings are
/// requested with encoding-type=url, decoded, and then the hostile-key rules decide.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_with_a_control_character_does_not_stop_the_sync() {
    let env = Env::default().await;
    env.put("c/good.txt", "good").await;
    env.put("c/space and+plus.txt", "odd but safe").await;
    env.stack
        .s3
        .put_virtual_object(env.bucket(), "c/bell\u{1}.txt", b"x".to_vec());
    let s = env.once("c/").assert_ok();
    assert_eq!(
        (s["downloaded"].as_u64(), s["skipped"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    assert_eq!(s["skippedKeys"][0]["key"], "c/bell\\u{1}.txt", "{s}");
    let t = tree(&env.local);
    assert_eq!(t["space and+plus.txt"], b"odd but safe");
    assert_eq!(t.len(), 2);
}

/// A listing that says "truncated" without a token, or returns the token it was given, cannot
/// be trusted: the pass fails (no endless loop), and no file is deleted on a partial listing.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_listing_is_an_error_and_deletes_nothing() {
    use devstack::s3::ListingFault;
    let env = Env::default().await;
    for i in 0..1_005 {
        env.stack
            .s3
            .put_virtual_object(env.bucket(), &format!("l/{i:05}"), b"v".to_vec());
    }
    let cfg = env.write_config(&env.config("l/", |m| {
        m.insert("deleteExtraneous".into(), true.into());
    }));
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 1_005);
    for fault in [
        ListingFault::TruncatedWithoutToken,
        ListingFault::RepeatedToken,
    ] {
        env.stack.s3.set_listing_fault(Some(fault));
        let r = tokio::time::timeout(Duration::from_secs(60), run_async(once_args(&cfg)))
            .await
            .expect("the pass ends");
        assert_eq!(r.code(), Some(1), "{fault:?}: {}", r.stderr());
        assert!(
            r.stderr().contains("ListingInvalid") || r.stderr().contains("is inconsistent"),
            "{}",
            r.stderr()
        );
        assert_eq!(tree(&env.local).len(), 1_005, "{fault:?}: nothing deleted");
    }
}

/// `once --json` printed 43 KB for 300 skipped keys: the summary keeps the first 20 problems
/// (keys and messages shortened), the totals, and says it is truncated.
#[tokio::test(flavor = "multi_thread")]
async fn once_json_stays_small_with_hundreds_of_problems() {
    let env = Env::default().await;
    env.put("j/ok.txt", "ok").await;
    for i in 0..300 {
        let key = format!("j/../{}/{i}", "y".repeat(800));
        env.stack
            .s3
            .put_virtual_object(env.bucket(), &key, b"x".to_vec());
    }
    let r = env.once("j/");
    let s = r.assert_ok();
    assert!(r.stdout().len() < 16 * 1024, "{} bytes", r.stdout().len());
    assert_eq!(s["skipped"], 300);
    assert_eq!(s["skippedKeys"].as_array().unwrap().len(), 20);
    assert_eq!(s["truncated"], true);
    assert!(s.get("planned").is_none(), "a real pass prints no plan");
}

/// Objects in GLACIER or DEEP_ARCHIVE failed every pass with InvalidObjectState. They are
/// skipped with the reason (a key problem, not a failure), and never counted as deleted.
#[tokio::test(flavor = "multi_thread")]
async fn archived_objects_are_skipped_with_the_reason() {
    let env = Env::default().await;
    env.put("g/live.txt", "live").await;
    for (key, class) in [("g/cold.bin", "GLACIER"), ("g/colder.bin", "DEEP_ARCHIVE")] {
        env.stack
            .s3
            .put_virtual_archived_object(env.bucket(), key, b"zzz".to_vec(), class);
    }
    env.stack.s3.put_virtual_archived_object(
        env.bucket(),
        "g/instant.bin",
        b"ir".to_vec(),
        "GLACIER_IR",
    );
    let s = env.once("g/").assert_ok();
    assert_eq!(
        (
            s["downloaded"].as_u64(),
            s["skipped"].as_u64(),
            s["failed"].as_u64()
        ),
        (Some(2), Some(2), Some(0)),
        "{s}"
    );
    assert_eq!(s["skippedKeys"][0]["code"], "ArchivedObject", "{s}");
    assert!(
        s["skippedKeys"][0]["message"]
            .as_str()
            .unwrap()
            .contains("GLACIER"),
        "{s}"
    );
    let t = tree(&env.local);
    assert_eq!(t.keys().collect::<Vec<_>>(), ["instant.bin", "live.txt"]);
}

/// fileMode and dirMode give exact permission bits whatever the umask (synced files were
/// 0644 under root's umask, 0600 under a strict one).
#[tokio::test(flavor = "multi_thread")]
async fn file_and_dir_modes_apply_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::default().await;
    env.put("m/a/b/file.txt", "x").await;
    env.put("m/big.bin", noise(3 << 20, 1)).await;
    let cfg = env.write_config(&env.config("m/", |m| {
        m.insert("fileMode".into(), "0644".into());
        m.insert("dirMode".into(), "0755".into());
        m.insert("rangedDownloadThresholdBytes".into(), "1048576".into());
    }));
    let out = std::process::Command::new("sh")
        .args(["-c", "umask 077; exec \"$0\" once --config \"$1\""])
        .arg(common::bin())
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &str| {
        std::fs::metadata(env.local.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("a/b/file.txt"), 0o644);
    assert_eq!(mode("big.bin"), 0o644, "the ranged path too");
    assert_eq!(mode("a"), 0o755);
    assert_eq!(mode("a/b"), 0o755);
}

/// Durability is paid per batch, not per object (counted by strace over the real binary):
/// small objects are written as temporary files, made durable with one `syncfs` per batch,
/// renamed, and their folder fsynced once, before the state records them. The trace also
/// proves the order: no temporary file is renamed to its final name before a `syncfs` (or an
/// `fsync` of that file) finished after it was created.
#[tokio::test(flavor = "multi_thread")]
async fn small_objects_are_made_durable_a_batch_at_a_time() {
    if !std::process::Command::new("sh")
        .args(["-c", "command -v strace"])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: strace is not installed (scripts/test installs it)");
        return;
    }
    const N: usize = 300;
    let env = Env::default().await;
    for i in 0..N {
        env.put(&format!("f/{i:04}.txt"), format!("object {i}").as_str())
            .await;
    }
    let cfg = env.write_config(&env.config("f/", |_| {}));
    let trace = env.tmp.path().join("strace.out");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-e",
                "trace=openat,fsync,fdatasync,syncfs,renameat,renameat2",
                "-o",
            ])
            .arg(&trace)
            .arg(common::bin())
            .args(once_args(&cfg))
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(&env.local).len(), N);
    let text = std::fs::read_to_string(&trace).unwrap();
    let check = durable_order(&text);
    assert_eq!(
        check.renamed, N,
        "every object renamed from a temporary file"
    );
    assert!(
        check.violations.is_empty(),
        "renamed before durable: {:?}\n{}",
        &check.violations[..check.violations.len().min(3)],
        text.lines()
            .filter(|l| l.contains("syncfs") || l.contains("rename"))
            .take(12)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // 300 objects: a few syncfs (one per batch of up to 128 objects), a few folder fsyncs,
    // the state file: not one per object.
    assert!(
        check.syncs < 20,
        "{} fsync/syncfs calls for {N} objects in one folder",
        check.syncs
    );
    assert!(check.syncfs > 0, "no syncfs in the trace");
}

struct DurableOrder {
    /// Temporary files renamed to a final name.
    renamed: usize,
    /// fsync, fdatasync and syncfs calls.
    syncs: usize,
    syncfs: usize,
    /// Temporary files renamed without a completed sync since their creation.
    violations: Vec<String>,
}

/// Reads an `strace -f` log: a temporary file (`.gg-s3-sync.*.part`) becomes durable when a
/// `syncfs` returns after its creation, or an `fsync` of its descriptor returns; renaming it
/// before that is a violation. Calls split by another thread ("<unfinished ...>" and
/// "<... resumed>") count where they return.
fn durable_order(text: &str) -> DurableOrder {
    use std::collections::HashMap;
    let mut created: HashMap<String, bool> = HashMap::new(); // name -> durable
    let mut fd_name: HashMap<String, String> = HashMap::new();
    let mut pending_open: HashMap<String, String> = HashMap::new(); // pid -> name
    let mut pending_fsync: HashMap<String, String> = HashMap::new(); // pid -> fd
    let mut out = DurableOrder {
        renamed: 0,
        syncs: 0,
        syncfs: 0,
        violations: Vec::new(),
    };
    let temp_name = |line: &str| -> Option<String> {
        let start = line.find("\".gg-s3-sync.")? + 1;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_owned()).filter(|n| n.ends_with(".part"))
    };
    // strace pads short calls: `syncfs(22)                        = 0`.
    let result = |line: &str| {
        line.rsplit_once(" = ")
            .filter(|(call, _)| call.trim_end().ends_with(')'))
            .map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_owned())
    };
    for line in text.lines() {
        let pid = line.split_whitespace().next().unwrap_or("").to_owned();
        let returns = result(line).is_some() && !line.contains("<unfinished");
        if line.contains("syncfs(") || line.contains("<... syncfs resumed>") {
            if returns && result(line).as_deref() == Some("0") {
                out.syncs += 1;
                out.syncfs += 1;
                for durable in created.values_mut() {
                    *durable = true;
                }
            }
        } else if line.contains("fsync(")
            || line.contains("fdatasync(")
            || line.contains("sync resumed>")
        {
            let fd = if line.contains("resumed>") {
                pending_fsync.remove(&pid)
            } else {
                line.split('(').nth(1).map(|r| {
                    r.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .unwrap_or("")
                        .to_owned()
                })
            };
            if !returns {
                if let Some(fd) = fd {
                    pending_fsync.insert(pid, fd);
                }
                continue;
            }
            out.syncs += 1;
            if let Some(name) = fd.and_then(|fd| fd_name.get(&fd)) {
                if let Some(d) = created.get_mut(name) {
                    *d = true;
                }
            }
        } else if line.contains("openat(") || line.contains("<... openat resumed>") {
            let name = if line.contains("resumed>") {
                pending_open.remove(&pid)
            } else {
                temp_name(line).filter(|_| line.contains("O_CREAT"))
            };
            let Some(name) = name else { continue };
            if !returns {
                pending_open.insert(pid, name);
                continue;
            }
            if let Some(fd) = result(line).filter(|r| r.chars().all(|c| c.is_ascii_digit())) {
                fd_name.insert(fd, name.clone());
                created.insert(name, false);
            }
        } else if line.contains("rename") && !line.contains("resumed>") {
            if let Some(name) = temp_name(line) {
                out.renamed += 1;
                if created.remove(&name) != Some(true) {
                    out.violations.push(name);
                }
            }
        }
    }
    out
}
