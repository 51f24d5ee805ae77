//! Servers that fail mid-transfer, corrupt bodies, and kill -9 mid-sync.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{bin, noise, once_args, run_async, spawn_once, tree, Env};
use devstack::s3::Fault;

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_and_the_tree_is_exact() {
    let env = Env::default().await;
    for i in 0..6 {
        env.put(&format!("t/{i}.bin"), noise(200_000, i)).await;
    }
    let s3 = &env.stack.s3;
    s3.inject("t/0.bin", Fault::Status("InternalError"), 2);
    s3.inject("t/1.bin", Fault::Status("SlowDown"), 2);
    s3.inject("t/2.bin", Fault::Truncate(50_000), 1);
    s3.inject("t/3.bin", Fault::Reset(100_000), 1);
    s3.inject("t/4.bin", Fault::Corrupt(123_456), 1);
    let s = env.once_with("t/", |_| {}).await.assert_ok();
    assert_eq!(
        (s["downloaded"].as_u64(), s["failed"].as_u64()),
        (Some(6), Some(0)),
        "{s}"
    );
    let t = tree(&env.local);
    for i in 0..6 {
        assert_eq!(
            t[&format!("{i}.bin")],
            noise(200_000, i),
            "{i}.bin is byte-identical"
        );
    }
    assert!(s3.get_count() >= 6 + 5, "the faulty GETs were repeated");
}

/// Small listed objects take the lean GET (signed and sent on the SDK's stack without its
/// orchestration): each arrives as one GET without the SDK's `x-amz-user-agent`. A lean GET
/// that fails in any way is sent again through the SDK, which retries and maps as before, and
/// the object syncs byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn small_objects_take_the_lean_get_and_fall_back_to_the_sdk_on_any_failure() {
    let env = Env::default().await;
    let s3 = &env.stack.s3;
    for i in 0..20 {
        env.put(&format!("l/{i:02}.bin"), noise(20_000, i)).await;
    }
    let (gets, plain) = (s3.get_count(), s3.plain_get_count());
    let s = env.once_with("l/", |_| {}).await.assert_ok();
    assert_eq!(s["downloaded"], 20, "{s}");
    assert_eq!(s3.get_count() - gets, 20, "one GET per object");
    assert_eq!(s3.plain_get_count() - plain, 20, "every one a lean GET");

    for i in 0..5 {
        env.put(&format!("l/{i:02}.bin"), noise(20_000, 100 + i))
            .await;
    }
    s3.inject("l/00.bin", Fault::Status("InternalError"), 1);
    s3.inject("l/01.bin", Fault::Status("SlowDown"), 1);
    s3.inject("l/02.bin", Fault::Truncate(5_000), 1);
    s3.inject("l/03.bin", Fault::Reset(5_000), 1);
    s3.inject("l/04.bin", Fault::Status("AccessDenied"), 1);
    let (gets, plain) = (s3.get_count(), s3.plain_get_count());
    let cfg = env.write_config(&env.config("l/", |_| {}));
    let out = tokio::task::block_in_place(|| {
        Command::new(bin())
            .args(once_args(&cfg))
            .env("RUST_LOG", "info,gg_s3_sync::sync::s3=debug")
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // tests/proxy.rs relies on this line to prove the lean GET went through the proxy.
    assert_eq!(
        stderr.matches("lean GET handed to the SDK").count(),
        5,
        "{stderr}"
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (s["downloaded"].as_u64(), s["failed"].as_u64()),
        (Some(5), Some(0)),
        "{s}"
    );
    assert_eq!(s3.plain_get_count() - plain, 5, "each tried lean first");
    assert_eq!(s3.get_count() - gets, 10, "then once through the SDK");
    let t = tree(&env.local);
    for i in 0..20 {
        let seed = if i < 5 { 100 + i } else { i };
        assert_eq!(t[&format!("{i:02}.bin")], noise(20_000, seed), "{i:02}.bin");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanently_corrupt_object_fails_alone_and_leaves_nothing_behind() {
    let env = Env::default().await;
    env.put("c/good.bin", noise(10_000, 1)).await;
    env.put("c/bad.bin", noise(10_000, 2)).await;
    env.stack.s3.inject("c/bad.bin", Fault::Corrupt(5), 100);
    let r = env.once_with("c/", |_| {}).await;
    assert_eq!(r.code(), Some(1));
    let s = r.summary();
    assert_eq!(
        (s["downloaded"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["failures"][0]["code"], "ChecksumMismatch", "{s}");
    assert!(
        s["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("(ETag)"),
        "{s}"
    );
    assert_eq!(
        tree(&env.local).keys().collect::<Vec<_>>(),
        ["good.bin"],
        "no corrupt or partial file"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_sync_then_restart_gives_an_exact_tree_and_no_temp_files() {
    let env = Env::default().await;
    for i in 0..4 {
        env.put(&format!("k/{i}.bin"), noise(1 << 20, i)).await;
    }
    env.put("k/small.txt", "s").await;
    env.stack.s3.set_chunk_delay(Duration::from_millis(3));
    let cfg = env.write_config(&env.config("k/", |m| {
        m.insert("maxConcurrency".into(), "2".into());
    }));
    let mut child = spawn_once(&cfg);
    for _ in 0..1000 {
        if tree(&env.local).keys().any(|k| k.contains(".gg-s3-sync.")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        tree(&env.local).keys().any(|k| k.contains(".gg-s3-sync.")),
        "killed mid-download"
    );
    assert!(Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let _ = child.wait();

    env.stack.s3.set_chunk_delay(Duration::ZERO);
    run_async(once_args(&cfg)).await.assert_ok();
    let t = tree(&env.local);
    assert_eq!(t.len(), 5, "{:?}", t.keys().collect::<Vec<_>>());
    for i in 0..4 {
        assert_eq!(t[&format!("{i}.bin")], noise(1 << 20, i));
    }
    assert!(
        !t.keys().any(|k| k.contains(".gg-s3-sync.")),
        "temp files swept"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn checksums_catch_corruption_no_md5_can() {
    let env = Env::default().await;
    // Multipart ETags (…-3) are not MD5s, so only the object's x-amz-checksum can tell.
    env.stack
        .s3
        .put_virtual_multipart_object(env.bucket(), "x/ok.bin", noise(100_000, 1), 3);
    env.stack
        .s3
        .put_virtual_multipart_object(env.bucket(), "x/bad.bin", noise(100_000, 2), 3);
    env.stack.s3.inject("x/bad.bin", Fault::Corrupt(77), 100);
    let r = env.once_with("x/", |_| {}).await;
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let s = r.summary();
    assert_eq!(
        (s["downloaded"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["failures"][0]["code"], "ChecksumMismatch", "{s}");
    assert!(
        s["failures"][0]["message"]
            .as_str()
            .unwrap()
            .contains("x-amz-checksum"),
        "{s}"
    );
    let t = tree(&env.local);
    assert_eq!(t.keys().collect::<Vec<_>>(), ["ok.bin"]);
    assert_eq!(t["ok.bin"], noise(100_000, 1));
}

/// A size-limited tmpfs, unmounted on drop (the tests run as root).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: std::path::PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "mounting a tmpfs needs root (run the tests as root, see README)"
        );
        Self(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_reported_with_numbers_and_loses_nothing() {
    let env = Env::default().await;
    let disk = SmallDisk::mount(env.tmp.path().join("small"), "1m");
    env.put("d/a.bin", noise(200_000, 1)).await;
    env.put("d/huge.bin", noise(2 << 20, 2)).await;
    let edit = |m: &mut serde_json::Map<String, serde_json::Value>| {
        m.insert("localDir".into(), disk.0.display().to_string().into());
    };
    // The object that cannot fit is refused before a byte is written; the other one syncs.
    let r = env.once_with("d/", edit).await;
    assert_eq!(r.code(), Some(1));
    let s = r.summary();
    assert_eq!(
        (s["downloaded"].as_u64(), s["failed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(s["failures"][0]["code"], "DiskFull");
    let msg = s["failures"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("d/huge.bin needs 2162688 bytes") && msg.contains("free"),
        "{msg}"
    );

    // Two downloads that each fit alone but not together: one runs out of space mid-write.
    env.stack
        .s3
        .delete_object(env.bucket(), "d/huge.bin")
        .unwrap();
    env.put("d/b.bin", noise(450_000, 3)).await;
    env.put("d/c.bin", noise(450_000, 4)).await;
    env.stack.s3.set_chunk_delay(Duration::from_millis(1));
    let r = env
        .once_with("d/", |m| {
            edit(m);
            m.insert("maxConcurrency".into(), "2".into());
        })
        .await;
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let s = r.summary();
    assert_eq!(s["failures"][0]["code"], "DiskFull", "{s}");
    let t = tree(&disk.0);
    assert_eq!(
        t["a.bin"],
        noise(200_000, 1),
        "what was synced before is kept"
    );
    assert!(
        !t.keys().any(|k| k.contains(".gg-s3-sync.")),
        "no temporary file left: {:?}",
        t.keys()
    );
    assert!(
        t.values().all(|v| v.len() == 200_000 || v.len() == 450_000),
        "no partial file under a final name"
    );
}

/// Small objects go through the group-commit writer, which can meet a full disk after the
/// download counted (here the inodes run out, which the free-bytes check before a download
/// cannot see): each one it cannot write is a DiskFull failure (not a download), leaves no
/// temporary file, and is not recorded; every object that fitted is complete and recorded
/// (the next pass finds it unchanged).
#[tokio::test(flavor = "multi_thread")]
async fn small_objects_that_meet_a_full_disk_in_the_writer_are_failures_not_downloads() {
    let env = Env::default().await;
    let disk = SmallDisk::mount(env.tmp.path().join("small"), "4m,nr_inodes=24");
    const N: u64 = 48;
    const SIZE: usize = 4_000;
    for i in 0..N {
        env.put(&format!("w/{i:02}.bin"), noise(SIZE, i)).await;
    }
    let edit = |m: &mut serde_json::Map<String, serde_json::Value>| {
        m.insert("localDir".into(), disk.0.display().to_string().into());
    };
    let r = env.once_with("w/", edit).await;
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let s = r.summary();
    let (downloaded, failed) = (
        s["downloaded"].as_u64().unwrap(),
        s["failed"].as_u64().unwrap(),
    );
    assert_eq!(downloaded + failed, N, "{s}");
    assert!(downloaded > 0 && failed > 0, "{s}");
    let failures = s["failures"].as_array().unwrap();
    assert!(
        failures.iter().all(|f| f["code"] == "DiskFull"),
        "{failures:?}"
    );
    let t = tree(&disk.0);
    assert!(
        !t.keys().any(|k| k.contains(".gg-s3-sync.")),
        "no temporary file left: {:?}",
        t.keys()
    );
    assert_eq!(t.len() as u64, downloaded, "{:?}", t.keys());
    for (name, body) in &t {
        let i: u64 = name.trim_end_matches(".bin").parse().unwrap();
        assert_eq!(body, &noise(SIZE, i), "{name} is complete");
    }
    // What was written is recorded: the next pass downloads nothing it already has (and a
    // full disk does not stop the pass before it starts).
    let r = env.once_with("w/", edit).await;
    let s = r.summary();
    assert_eq!(s["unchanged"].as_u64(), Some(downloaded), "{s}");
    assert_eq!(s["downloaded"].as_u64(), Some(0), "{s}");
}

/// A device whose disk filled up after it synced everything still passes: nothing to write,
/// nothing to fail. (Every pass failed with LocalFileError, because the pass began by creating
/// a probe file to learn whether the file system tells case apart.)
#[tokio::test(flavor = "multi_thread")]
async fn a_synced_folder_on_a_full_disk_still_passes() {
    let env = Env::default().await;
    let disk = SmallDisk::mount(env.tmp.path().join("small"), "4m,nr_inodes=8");
    for i in 0..4 {
        env.put(&format!("f/{i}.txt"), format!("file {i}").as_str())
            .await;
    }
    let edit = |m: &mut serde_json::Map<String, serde_json::Value>| {
        m.insert("localDir".into(), disk.0.display().to_string().into());
    };
    env.once_with("f/", edit).await.assert_ok();
    // Someone else fills the disk (its inodes).
    let mut filler = 0;
    while std::fs::write(disk.0.join(format!("other-{filler}")), b"x").is_ok() {
        filler += 1;
    }
    assert!(filler > 0);
    let s = env.once_with("f/", edit).await.assert_ok();
    assert_eq!(s["unchanged"], 4, "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_transfer_is_abandoned_and_retried() {
    let env = Env::default().await;
    env.put("s/slow.bin", noise(300_000, 5)).await;
    // The server stops sending for 20 s after the first chunk; the SDK's stalled-stream
    // protection (5 s grace) abandons the body and the object is fetched again.
    env.stack.s3.inject("s/slow.bin", Fault::Stall(20_000), 1);
    let gets = env.stack.s3.get_count();
    let s = env.once_with("s/", |_| {}).await.assert_ok();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert!(
        s["durationMs"].as_u64().unwrap() < 19_000,
        "did not wait for the stall: {s}"
    );
    assert!(env.stack.s3.get_count() - gets >= 2);
    assert_eq!(tree(&env.local)["slow.bin"], noise(300_000, 5));
}

/// Two instances on one localDir: the second fails fast, naming the first's PID, and does not
/// sweep away the first's temporary file; once the first is done, the second runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_instance_fails_fast_and_leaves_the_first_alone() {
    let env = Env::default().await;
    env.put("two/slow.bin", noise(2 << 20, 4)).await;
    env.stack.s3.set_chunk_delay(Duration::from_millis(5));
    let cfg = env.write_config(&env.config("two/", |_| {}));
    let mut first = spawn_once(&cfg);
    let temp = || {
        tree(&env.local)
            .into_keys()
            .find(|k| k.contains(".gg-s3-sync."))
    };
    for _ in 0..1000 {
        if temp().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let in_flight = temp().expect("the first instance is downloading");
    let second = run_async(once_args(&cfg)).await;
    assert_eq!(second.code(), Some(1), "{}", second.stderr());
    assert!(
        second.stderr().contains(&format!(
            "in use by another gg-s3-sync (PID {})",
            first.id()
        )),
        "{}",
        second.stderr()
    );
    assert!(
        env.local.join(&in_flight).exists() || env.local.join("slow.bin").exists(),
        "the first instance's temporary file was not swept"
    );
    env.stack.s3.set_chunk_delay(Duration::ZERO);
    assert!(first.wait().unwrap().success());
    assert_eq!(tree(&env.local)["slow.bin"], noise(2 << 20, 4));
    run_async(once_args(&cfg)).await.assert_ok();
}

/// Ranged downloads that each fit alone but not together: the part that meets ENOSPC reports
/// DiskFull with the numbers, as the single-GET path does (it was a bare LocalFileError).
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_during_ranged_parts_is_disk_full() {
    let env = Env::default().await;
    let disk = SmallDisk::mount(env.tmp.path().join("small-ranged"), "4m");
    env.put("r/one.bin", noise(5 << 19, 11)).await;
    env.put("r/two.bin", noise(5 << 19, 12)).await;
    env.stack.s3.set_chunk_delay(Duration::from_millis(1));
    let r = env
        .once_with("r/", |m| {
            m.insert("localDir".into(), disk.0.display().to_string().into());
            m.insert("rangedDownloadThresholdBytes".into(), "1048576".into());
            m.insert("maxConcurrency".into(), "2".into());
        })
        .await;
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    let s = r.summary();
    assert_eq!(s["failures"][0]["code"], "DiskFull", "{s}");
    let t = tree(&disk.0);
    assert!(
        t.iter()
            .filter(|(k, _)| !k.contains(".gg-s3-sync."))
            .all(|(_, v)| v.len() == 5 << 19),
        "no partial file under a final name"
    );
}
