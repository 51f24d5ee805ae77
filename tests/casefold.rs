//! localDir on a case-insensitive file system (vfat and exfat SD cards are): two keys that
//! differ only in case are one file there. Before, they overwrote each other and both were
//! downloaded again every pass. The kernel here cannot mount vfat or ext4 casefold, so the test
//! mounts `tests/py/casefold_fs.py`, a case-insensitive, case-preserving FUSE file system.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{python, Env};

struct Mount {
    point: PathBuf,
    child: Child,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount")
            .arg("-u")
            .arg(&self.point)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mounted(point: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(point.to_str().unwrap_or("")))
}

/// Mounts the case-insensitive file system, or says why it cannot.
fn mount(dir: &Path) -> Result<Mount, String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse".into());
    }
    let fusepy = Command::new(python())
        .args(["-c", "import fuse"])
        .status()
        .is_ok_and(|s| s.success());
    if !fusepy {
        return Err("the test Python has no fusepy (scripts/test installs it)".into());
    }
    let (backing, point) = (dir.join("backing"), dir.join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&point).unwrap();
    let child = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/casefold_fs.py"
        ))
        .arg(&backing)
        .arg(&point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut m = Mount { point, child };
    for _ in 0..100 {
        if mounted(&m.point) {
            return Ok(m);
        }
        if let Ok(Some(_)) = m.child.try_wait() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(m.child.stderr.as_mut().unwrap(), &mut err);
            return Err(format!("the FUSE mount failed: {err}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err("the FUSE mount did not appear".into())
}

/// The mount, or `None` after saying on stderr why the test is skipped.
fn mount_or_skip(dir: &Path, what: &str) -> Option<Mount> {
    match mount(dir) {
        Ok(m) => Some(m),
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "\nSKIPPED {what}: {why}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_that_differ_only_in_case_are_a_reported_conflict() {
    let env = Env::default().await;
    let Some(m) = mount_or_skip(env.tmp.path(), "case-insensitive file system") else {
        return;
    };
    env.put("c/Readme.txt", "upper").await;
    env.put("c/README.TXT", "other").await;
    env.put("c/ok.txt", "ok").await;
    let local = m.point.join("content");
    let edit = |mm: &mut serde_json::Map<String, serde_json::Value>| {
        mm.insert("localDir".into(), local.display().to_string().into());
    };
    let s = env.once_with("c/", edit).await.assert_ok();
    assert_eq!(
        (s["downloaded"].as_u64(), s["skipped"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    assert_eq!(s["skippedKeys"][0]["code"], "CaseConflict", "{s}");
    assert_eq!(
        s["skippedKeys"][0]["key"], "c/Readme.txt",
        "listing order: README.TXT comes first"
    );
    // The second pass changes nothing: no endless re-download.
    let s = env.once_with("c/", edit).await.assert_ok();
    assert_eq!(
        (s["downloaded"].as_u64(), s["unchanged"].as_u64()),
        (Some(0), Some(2)),
        "{s}"
    );
    assert_eq!(std::fs::read(local.join("readme.txt")).unwrap(), b"other");
}

/// A file system without hard or symbolic links (this FUSE one; vfat and exfat too) cannot
/// hold releases: the pass fails once with the reason and the fix, and no partial release is
/// left for a reader.
#[tokio::test(flavor = "multi_thread")]
async fn releases_on_a_file_system_without_links_fail_with_the_fix() {
    let env = Env::default().await;
    let Some(m) = mount_or_skip(env.tmp.path(), "a file system without links") else {
        return;
    };
    env.put("c/a.txt", "a").await;
    let local = m.point.join("content");
    let run = env
        .once_with("c/", |mm| {
            mm.insert("localDir".into(), local.display().to_string().into());
            mm.insert("releases".into(), serde_json::json!({"keep": 2}));
        })
        .await;
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let err = run.stderr();
    assert!(
        err.contains("ReleasesUnsupported")
            && err.contains("make symbolic links")
            && err.contains("ext4"),
        "{err}"
    );
    assert!(
        std::fs::symlink_metadata(&local).is_err(),
        "no localDir half made"
    );
}
