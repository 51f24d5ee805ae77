//! Large objects: parallel ranged GETs, resume after kill -9, and a change mid-download.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{noise, once_args, run_async, spawn_once, tree, Env};
use devstack::s3::Fault;
use serde_json::Value;

const MIB: usize = 1 << 20;

fn small_threshold(m: &mut serde_json::Map<String, Value>) {
    // 1 MiB threshold: parts of 512 KiB, so small test objects take the ranged path.
    m.insert("rangedDownloadThresholdBytes".into(), "1048576".into());
    m.insert("maxConcurrency".into(), "4".into());
}

fn sidecar_parts(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".resume.json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .map(|v| v["done"].as_array().map_or(0, Vec::len))
        .max()
        .unwrap_or(0)
}

fn leftovers(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_keys()
        .filter(|k| k.contains(".gg-s3-sync."))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn large_objects_use_parallel_ranged_gets_and_survive_part_failures() {
    let env = Env::default().await;
    env.put("big/blob.bin", noise(5 * MIB, 1)).await;
    env.put("big/small.txt", "small").await;
    env.stack
        .s3
        .inject("big/blob.bin", Fault::Truncate(100_000), 1);
    env.stack
        .s3
        .inject("big/blob.bin", Fault::Status("InternalError"), 1);
    env.stack.s3.set_chunk_delay(Duration::from_millis(1));
    let gets = env.stack.s3.get_count();
    let s = env.once_with("big/", small_threshold).await.assert_ok();
    assert_eq!(s["downloaded"], 2, "{s}");
    assert_eq!(tree(&env.local)["blob.bin"], noise(5 * MIB, 1));
    // 10 parts of 512 KiB + the small object, plus the failed attempts (the SDK may absorb the 500).
    let used = env.stack.s3.get_count() - gets;
    assert!((12..=14).contains(&used), "{used} GETs");
    assert!(
        env.stack.s3.max_concurrent_gets() >= 2,
        "parts run in parallel"
    );
    assert!(
        leftovers(&env.local).is_empty(),
        "{:?}",
        leftovers(&env.local)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_then_restart_resumes_from_the_parts_on_disk() {
    let env = Env::default().await;
    env.put("r/blob.bin", noise(8 * MIB, 2)).await;
    env.stack.s3.set_chunk_delay(Duration::from_millis(2));
    let cfg = env.write_config(&env.config("r/", small_threshold));
    let mut child = spawn_once(&cfg);
    for _ in 0..1500 {
        if sidecar_parts(&env.local) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done_before = sidecar_parts(&env.local);
    assert!(done_before >= 4, "some parts were written before the kill");
    assert!(Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let _ = child.wait();
    assert!(
        !env.local.join("blob.bin").exists(),
        "nothing under the final name"
    );

    env.stack.s3.set_chunk_delay(Duration::ZERO);
    let gets = env.stack.s3.get_count();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(s["downloaded"], 1, "{s}");
    let fetched = env.stack.s3.get_count() - gets;
    assert!(
        fetched as usize <= 16 - done_before,
        "resumed: fetched {fetched} of 16 parts after {done_before} were done"
    );
    assert_eq!(tree(&env.local)["blob.bin"], noise(8 * MIB, 2));
    assert!(
        leftovers(&env.local).is_empty(),
        "{:?}",
        leftovers(&env.local)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_overwritten_mid_download_is_discarded_and_fetched_anew() {
    let env = Env::default().await;
    env.put("c/blob.bin", noise(4 * MIB, 3)).await;
    env.stack.s3.set_chunk_delay(Duration::from_millis(2));
    let cfg = env.write_config(&env.config("c/", |m| {
        small_threshold(m);
        m.insert("maxConcurrency".into(), "1".into());
    }));
    let pass = tokio::spawn(run_async(once_args(&cfg)));
    for _ in 0..1500 {
        if sidecar_parts(&env.local) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.put("c/blob.bin", noise(4 * MIB, 4)).await; // a new version while parts are downloading
    let r = pass.await.unwrap();
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    assert_eq!(
        r.summary()["failures"][0]["code"],
        "ObjectChanged",
        "{}",
        r.stdout()
    );
    assert!(
        leftovers(&env.local).is_empty(),
        "partial data of the old version discarded"
    );

    env.stack.s3.set_chunk_delay(Duration::ZERO);
    run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(tree(&env.local)["blob.bin"], noise(4 * MIB, 4));
}

/// SSE-KMS, DSSE-KMS and SSE-C objects have ETags that are not the MD5 of their data. Above the
/// ranged threshold they used to fail the MD5 check every pass, after three full downloads.
/// One rule now decides for both paths, from the encryption headers of the responses.
#[tokio::test(flavor = "multi_thread")]
async fn encrypted_objects_sync_on_both_paths_with_one_download_each() {
    use devstack::s3::Encryption;
    let env = Env::default().await;
    let cases = [
        ("kms/big.bin", Encryption::Kms, 3 * MIB),
        ("kms/dsse.bin", Encryption::DualLayerKms, 3 * MIB),
        ("kms/ssec.bin", Encryption::CustomerKey, 3 * MIB),
        ("kms/small.bin", Encryption::Kms, 100_000),
    ];
    for (i, (key, enc, len)) in cases.iter().enumerate() {
        env.stack
            .s3
            .put_virtual_encrypted_object(env.bucket(), key, noise(*len, i as u64), *enc);
    }
    let gets = env.stack.s3.get_count();
    let s = env.once_with("kms/", small_threshold).await.assert_ok();
    assert_eq!(s["downloaded"], 4, "{s}");
    let t = tree(&env.local);
    for (i, (key, _, len)) in cases.iter().enumerate() {
        assert_eq!(
            t[key.trim_start_matches("kms/")],
            noise(*len, i as u64),
            "{key}"
        );
    }
    // 3 × 6 parts of 512 KiB + 1 plain GET: each object fetched exactly once.
    assert_eq!(env.stack.s3.get_count() - gets, 19);
    assert!(leftovers(&env.local).is_empty());
}

/// A body that fails verification the same way twice is what the server stores: it is not
/// fetched a third time.
#[tokio::test(flavor = "multi_thread")]
async fn a_deterministic_mismatch_is_not_retried() {
    let env = Env::default().await;
    env.put("d/bad.bin", noise(3 * MIB, 9)).await;
    env.stack.s3.inject("d/bad.bin", Fault::Corrupt(1_000), 100);
    let gets = env.stack.s3.get_count();
    let r = env.once_with("d/", small_threshold).await;
    assert_eq!(r.code(), Some(1));
    assert_eq!(r.summary()["failures"][0]["code"], "ChecksumMismatch");
    // Two full ranged downloads of 6 parts (the second proves the digest is stable), not three.
    assert_eq!(env.stack.s3.get_count() - gets, 12);
    assert!(
        leftovers(&env.local).is_empty(),
        "{:?}",
        leftovers(&env.local)
    );
}

/// The resume files' names are predictable (derived from the key). A user who can write under
/// localDir plants symlinks at all three, pointing at a file the component (running as root)
/// must never write: each is removed or refused, never followed.
#[tokio::test(flavor = "multi_thread")]
async fn symlinks_planted_at_resume_file_names_are_never_followed() {
    use md5::{Digest, Md5};
    let env = Env::default().await;
    let key = "big/planted.bin";
    env.put(key, noise(3 * MIB, 5)).await;
    std::fs::create_dir_all(&env.local).unwrap();
    let victim = env.tmp.path().join("victim.txt");
    std::fs::write(&victim, b"must stay").unwrap();
    let id: String = Md5::digest(key.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for suffix in ["resume.part", "resume.json", "resume.json.tmp"] {
        std::os::unix::fs::symlink(
            &victim,
            env.local.join(format!(".gg-s3-sync.{id}.{suffix}")),
        )
        .unwrap();
    }
    let s = env.once_with("big/", small_threshold).await.assert_ok();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"must stay");
    assert_eq!(tree(&env.local)["planted.bin"], noise(3 * MIB, 5));
}

/// Multipart objects above the ranged threshold were checked by length alone. S3 keeps a
/// full-object checksum (CRC64NVME for new uploads): the assembled file must match it.
#[tokio::test(flavor = "multi_thread")]
async fn multipart_objects_are_checked_against_the_full_object_checksum() {
    use devstack::s3::FullObjectChecksum;
    let env = Env::default().await;
    let s3 = &env.stack.s3;
    s3.put_virtual_multipart_object_with(
        env.bucket(),
        "mp/good.bin",
        noise(3 * MIB, 6),
        3,
        FullObjectChecksum::Crc64Nvme,
    );
    s3.put_virtual_multipart_object_with(
        env.bucket(),
        "mp/bad.bin",
        noise(3 * MIB, 7),
        3,
        FullObjectChecksum::Crc64Nvme,
    );
    s3.inject("mp/bad.bin", Fault::Corrupt(4_000), 100);
    let r = env.once_with("mp/", small_threshold).await;
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
            .contains("crc64nvme"),
        "{s}"
    );
    let t = tree(&env.local);
    assert_eq!(t["good.bin"], noise(3 * MIB, 6));
    assert!(
        !t.contains_key("bad.bin"),
        "the corrupt file never gets its name"
    );
    assert!(
        leftovers(&env.local).is_empty(),
        "{:?}",
        leftovers(&env.local)
    );
}

/// S3 calling the credentials expired in the middle of a ranged download: the part is retried
/// with fresh credentials (before, with the same ones, which fails the same way on real S3).
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_on_a_part_fetches_fresh_credentials() {
    let env = Env::default().await;
    env.put("e/big.bin", noise(3 * MIB, 8)).await;
    env.stack
        .s3
        .inject("e/big.bin", Fault::Status("ExpiredToken"), 1);
    let s = env.once_with("e/", small_threshold).await.assert_ok();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert_eq!(tree(&env.local)["big.bin"], noise(3 * MIB, 8));
    assert_eq!(
        env.stack.account.stats().credentials_issued,
        2,
        "the expired credentials were dropped and new ones fetched"
    );
}

/// Parts in flight are bounded by maxConcurrency across all objects (each holds a write
/// buffer): memory no longer grows as objects × parts.
#[tokio::test(flavor = "multi_thread")]
async fn parts_in_flight_are_bounded_across_objects() {
    let env = Env::default().await;
    for i in 0..3 {
        env.put(&format!("m/{i}.bin"), noise(3 * MIB, 20 + i)).await;
    }
    env.stack.s3.set_chunk_delay(Duration::from_millis(1));
    let s = env
        .once_with("m/", |m| {
            m.insert("rangedDownloadThresholdBytes".into(), "1048576".into());
            m.insert("maxConcurrency".into(), "2".into());
        })
        .await
        .assert_ok();
    assert_eq!(s["downloaded"], 3);
    assert!(
        env.stack.s3.max_concurrent_gets() <= 2,
        "{} GETs at once",
        env.stack.s3.max_concurrent_gets()
    );
}
