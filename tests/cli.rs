//! The command line: configuration errors, log formats, secrets, `run`, and SIGTERM.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bin, noise, run, tree, Env};

fn spawn_run(config: &std::path::Path) -> Child {
    Command::new(bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gg-s3-sync run")
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Polls `cond` every 20 ms for up to 20 s (a deadline for a condition, not a timing assertion).
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn wait_exit(child: Child) -> (std::process::ExitStatus, String) {
    let status = tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .expect("process exits promptly after SIGTERM")
        .unwrap()
}

fn temp_files(root: &std::path::Path) -> Vec<String> {
    tree(root)
        .into_keys()
        .filter(|k| k.contains(".gg-s3-sync."))
        .collect()
}

#[test]
fn invalid_configuration_names_every_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "bucket: s3://my-bucket/data\nlocalDir: /tmp/x\nmaxConcurrency: lots\nsyncIntervalSeconds: \"60\"\nlocaldir: /y\n",
    )
    .unwrap();
    let r = run(&["once", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code(), Some(2), "{}", r.stderr());
    let err = r.stderr();
    for needle in [
        "bucket: expected a bucket name, got the URL 's3://my-bucket/data'; set bucket: 'my-bucket' and prefix: 'data'",
        "maxConcurrency: expected a whole number from 1 to 256, got \"lots\"",
        "roleAlias: required",
        "credentialsEndpoint: required",
        "region: required",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    assert!(
        !err.contains("syncIntervalSeconds"),
        "a string number is valid: {err}"
    );

    std::fs::write(&cfg, "bucket: [unclosed\n").unwrap();
    let r = run(&["once", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code(), Some(2));
    assert!(
        r.stderr().contains("is not valid YAML") && r.stderr().contains("line"),
        "{}",
        r.stderr()
    );

    let r = run(&[
        "once",
        "--config",
        dir.path().join("missing.yaml").to_str().unwrap(),
    ]);
    assert_eq!(r.code(), Some(2));
    assert!(
        r.stderr().contains("cannot read configuration file"),
        "{}",
        r.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn yaml_config_with_string_values_and_unknown_key_warning() {
    let env = Env::default().await;
    env.put("y/a.txt", "yaml").await;
    let json = env.config("y", |m| {
        m.insert("maxConcurrency".into(), "2".into());
        m.insert("s3ForcePathStyle".into(), "true".into());
        m.insert("syncInterval".into(), "60".into());
    });
    // JSON is YAML; write it as a .yaml file to go through the YAML parser.
    let path = env.tmp.path().join("cfg.yaml");
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let r = run(&["once", "--json", "--config", path.to_str().unwrap()]);
    let s = r.assert_ok();
    assert_eq!(s["downloaded"], 1);
    assert!(
        r.stderr()
            .contains("unknown configuration key 'syncInterval' ignored"),
        "{}",
        r.stderr()
    );
    assert!(
        r.stderr()
            .contains("prefix 'y' is treated as the folder 'y/'"),
        "{}",
        r.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_and_no_secrets_even_at_trace_level() {
    let env = Env::default().await;
    env.put("s/a.txt", "secret-free").await;
    let cfg = env.write_config(&env.config("s/", |_| {}));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args([
                "--log-format",
                "json",
                "once",
                "--config",
                cfg.to_str().unwrap(),
            ])
            .env("RUST_LOG", "trace")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines = 0;
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 10, "trace level logs plenty");
    let all = format!("{stderr}{}", String::from_utf8_lossy(&out.stdout));
    let sessions = env.stack.account.sessions();
    assert!(!sessions.is_empty());
    for s in sessions {
        assert!(
            !all.contains(&s.secret),
            "secret access key leaked into logs"
        );
        assert!(!all.contains(&s.token), "session token leaked into logs");
        assert!(
            !all.contains(&s.token[..40]),
            "session token prefix leaked into logs"
        );
    }
    let key_pem = &env.stack.device.key_pem;
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(
        !all.contains(key_body),
        "private key material leaked into logs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_syncs_every_interval_and_stops_cleanly_on_sigterm() {
    let env = Env::default().await;
    env.put("r/first.txt", "1").await;
    let cfg = env.write_config(&env.config("r/", |m| {
        m.insert("syncIntervalSeconds".into(), "1".into());
    }));
    let child = spawn_run(&cfg);
    let local = env.local.clone();
    wait_for("first pass", || local.join("first.txt").exists()).await;
    env.put("r/second.txt", "2").await;
    wait_for("a later pass to pick up the new object", || {
        local.join("second.txt").exists()
    })
    .await;
    sigterm(&child);
    let (status, stderr) = wait_exit(child).await;
    assert!(
        status.success(),
        "SIGTERM is a clean stop: {status:?}\n{stderr}"
    );
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    // Only one credentials exchange for several passes: the cache is used.
    assert_eq!(env.stack.account.stats().credentials_issued, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_download_leaves_no_partial_file() {
    let env = Env::default().await;
    for i in 0..4 {
        env.put(&format!("big/{i}.bin"), noise(1 << 20, i)).await;
    }
    env.stack.s3.set_chunk_delay(Duration::from_millis(4)); // ~1 s per MiB
    let cfg = env.write_config(&env.config("big/", |m| {
        m.insert("maxConcurrency".into(), "2".into());
    }));
    let child = spawn_run(&cfg);
    let local = env.local.clone();
    wait_for("a download in progress", || !temp_files(&local).is_empty()).await;
    sigterm(&child);
    let (status, stderr) = wait_exit(child).await;
    assert!(status.success(), "{status:?}\n{stderr}");
    assert_eq!(
        temp_files(&env.local),
        Vec::<String>::new(),
        "temporary files removed"
    );
    for (name, data) in tree(&env.local) {
        let i: u64 = name.trim_end_matches(".bin").parse().unwrap();
        assert_eq!(
            data,
            noise(1 << 20, i),
            "{name} under its final name is complete"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn once_reports_credentials_errors_with_exit_1() {
    let env = Env::default().await;
    let cfg = env.write_config(&env.config("x/", |m| {
        m.insert("roleAlias".into(), "TypoAlias".into());
    }));
    let r = run(&["once", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code(), Some(1));
    assert!(
        r.stderr().contains("role alias 'TypoAlias' does not exist"),
        "{}",
        r.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_private_key_names_its_permissions_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    // Runs the component as `nobody` (root ignores file modes), with a root-only key like the
    // Greengrass installer writes. Everything it needs is copied into a folder nobody can reach.
    let env = Env::default().await;
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode(env.tmp.path(), 0o755);
    let dir = env.tmp.path().join("as-nobody");
    std::fs::create_dir(&dir).unwrap();
    mode(&dir, 0o777);
    let copy = |from: &std::path::Path, name: &str, m: u32| {
        let to = dir.join(name);
        std::fs::copy(from, &to).unwrap();
        mode(&to, m);
        to
    };
    let binary = copy(std::path::Path::new(bin()), "gg-s3-sync", 0o755);
    let key = copy(&env.stack.device.key_path, "privKey.key", 0o600);
    let cert = copy(&env.stack.device.cert_path, "thingCert.crt", 0o644);
    let ca = copy(&env.stack.ca.files.cert_path, "rootCA.pem", 0o644);
    let cfg = env.config("k/", |m| {
        m.insert("privateKeyPath".into(), key.display().to_string().into());
        m.insert(
            "certificateFilePath".into(),
            cert.display().to_string().into(),
        );
        m.insert("rootCaPath".into(), ca.display().to_string().into());
        m.insert(
            "localDir".into(),
            dir.join("local").display().to_string().into(),
        );
        m.insert(
            "stateDir".into(),
            dir.join("state").display().to_string().into(),
        );
    });
    let cfg_path = copy(&env.write_config(&cfg), "config.json", 0o644);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["once", "--config"])
        .arg(&cfg_path)
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in [
        "cannot read the private key",
        "(privateKeyPath)",
        "mode 0600 and owner uid 0",
        "runs as uid 65534",
        "RequiresPrivilege: true",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_bar_on_a_terminal_plain_lines_otherwise() {
    let env = Env::default().await;
    for i in 0..4 {
        env.put(&format!("p/{i}.bin"), noise(200_000, i)).await;
    }
    env.stack.s3.set_chunk_delay(Duration::from_millis(3));
    let cfg = env.write_config(&env.config("p/", |m| {
        m.insert("maxConcurrency".into(), "2".into());
    }));
    // script(1) runs the command on a pseudo-terminal: the bar is drawn on stderr.
    let cmd = format!("{} once --config {}", bin(), cfg.display());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("/4 objects") && text.contains("B/s") && text.contains("ETA"),
        "{text}"
    );

    // Without a terminal there is no bar, only log lines.
    let cfg = env.write_config(&env.config("p/", |m| {
        m.insert(
            "localDir".into(),
            env.tmp.path().join("plain").display().to_string().into(),
        );
        m.insert(
            "stateDir".into(),
            env.tmp
                .path()
                .join("plain-state")
                .display()
                .to_string()
                .into(),
        );
    }));
    let r = run(&["once", "--config", cfg.to_str().unwrap()]);
    assert_eq!(r.code(), Some(0));
    assert!(
        !r.stderr().contains("objects") && !r.stderr().contains("ETA"),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("sync pass finished"), "{}", r.stderr());
}

/// A fatal error is printed once, and only configuration or usage problems exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn fatal_errors_print_once_and_exit_by_kind() {
    let env = Env::default().await;
    let mut cfg = env.config("p/", |_| {});
    let dir = cfg["localDir"].clone();
    cfg.as_object_mut().unwrap().remove("localDir");
    cfg["localdir"] = dir;
    let path = env.write_config(&cfg);
    let r = run(&["once", "--config", path.to_str().unwrap()]);
    assert_eq!(r.code(), Some(2), "{}", r.stderr());
    assert_eq!(
        r.stderr().matches("localDir: required").count(),
        1,
        "printed once:\n{}",
        r.stderr()
    );
    assert!(
        r.stderr().contains("rename it to 'localDir'"),
        "{}",
        r.stderr()
    );

    // Not a configuration problem: the state folder cannot be created (its parent is a file).
    let blocker = env.tmp.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let path = env.write_config(&env.config("p/", |m| {
        m.insert(
            "stateDir".into(),
            blocker.join("state").display().to_string().into(),
        );
    }));
    let r = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    assert_eq!(
        r.stderr().matches("cannot start syncing").count(),
        1,
        "{}",
        r.stderr()
    );
}

/// The real binary under libfaketime, its clock three hours ahead (a board without a real-time
/// clock before NTP), against an S3 that refuses requests dated more than 15 minutes off, as
/// AWS does: credentials are judged on the provider's clock and S3 signing corrects for the
/// skew, so the pass syncs and the status says how far off the clock is.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_clock_hours_ahead_still_syncs() {
    let env = Env::default().await;
    env.put("t/a.txt", "a").await;
    if std::process::Command::new("faketime")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: faketime is not installed (scripts/test installs it)");
        return;
    }
    let cfg = env.write_config(&env.config("t/", |_| {}));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("faketime")
            .arg("+3 hours")
            .arg(bin())
            .args(["once", "--json", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert!(
        stderr.contains("this device's clock is 1") && stderr.contains("ahead of"),
        "the skew is named: {stderr}"
    );
    assert_eq!(tree(&env.local)["a.txt"], b"a");
}
