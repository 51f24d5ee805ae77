//! Shared test harness: a devstack on port 0 in a temp folder, configs, and the real binary.
#![allow(dead_code, unreachable_pub)] // each test crate uses a different subset

pub mod mosquitto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use devstack::{DevStack, Options};
use serde_json::Value;

/// A started devstack plus folders for one component.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub stack: DevStack,
    pub local: PathBuf,
    pub state: PathBuf,
}

impl Env {
    pub async fn start(options: Options) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stack = DevStack::start(&tmp.path().join("stack"), options)
            .await
            .expect("devstack starts");
        let local = tmp.path().join("local");
        let state = tmp.path().join("state");
        Self {
            tmp,
            stack,
            local,
            state,
        }
    }

    pub async fn default() -> Self {
        Self::start(Options::default()).await
    }

    pub fn bucket(&self) -> &str {
        &self.stack.options.bucket
    }

    pub async fn put(&self, key: &str, data: impl Into<bytes_like::Data>) {
        self.stack
            .s3
            .put_object(self.bucket(), key, data.into().0)
            .await
            .expect("seed object");
    }

    /// The component configuration for `prefix`, with `edit` applied.
    pub fn config(
        &self,
        prefix: &str,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Value {
        let mut v = self
            .stack
            .component_config(prefix, &self.local, &self.state);
        edit(v.as_object_mut().expect("object"));
        v
    }

    /// Writes `config` to a file and returns its path.
    pub fn write_config(&self, config: &Value) -> PathBuf {
        let path = self
            .tmp
            .path()
            .join(format!("config-{}.json", fastrand::u32(..)));
        DevStack::write_config(&path, config).expect("write config");
        path
    }

    /// Writes a config for `prefix` (with `edit`) and runs `once --json` off the runtime.
    pub async fn once_with(
        &self,
        prefix: &str,
        edit: impl FnOnce(&mut serde_json::Map<String, Value>),
    ) -> Run {
        run_async(once_args(&self.write_config(&self.config(prefix, edit)))).await
    }

    /// Session credentials for the default device, as the credentials provider issues them.
    pub fn session(&self) -> devstack::account::Issued {
        self.stack
            .account
            .exchange(
                &self.stack.device.cert_der,
                None,
                &self.stack.options.role_alias,
            )
            .expect("credentials for the default device")
    }

    /// Runs `gg-s3-sync once` with the default config for `prefix`.
    pub fn once(&self, prefix: &str) -> Run {
        let cfg = self.write_config(&self.config(prefix, |_| {}));
        run(&["once", "--json", "--config", cfg.to_str().unwrap()])
    }
}

/// Files under `root`: relative path → contents.
pub fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(e.path()).unwrap_or_default());
            }
        }
    }
    out
}

/// The binary's output.
pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    /// The `--json` summary.
    pub fn summary(&self) -> Value {
        serde_json::from_str(&self.stdout()).unwrap_or_else(|e| {
            panic!(
                "no JSON summary ({e}); stdout: {}\nstderr: {}",
                self.stdout(),
                self.stderr()
            )
        })
    }
    pub fn assert_ok(&self) -> Value {
        assert_eq!(
            self.code(),
            Some(0),
            "stdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.summary()
    }
}

/// `once --json --config <cfg>`.
pub fn once_args(cfg: &Path) -> Vec<String> {
    vec![
        "once".into(),
        "--json".into(),
        "--config".into(),
        cfg.display().to_string(),
    ]
}

/// Starts `once` on `cfg` in the background, its output discarded (for tests that kill it or
/// watch it from outside).
pub fn spawn_once(cfg: &Path) -> std::process::Child {
    std::process::Command::new(bin())
        .args(once_args(cfg))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start gg-s3-sync once")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gg-s3-sync")
}

pub fn run(args: &[&str]) -> Run {
    let output = std::process::Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run gg-s3-sync");
    Run { output }
}

/// Runs the binary without blocking the test's runtime.
pub async fn run_async(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    })
    .await
    .expect("join")
}

/// Validates `docs` against `docs/<schema>.schema.json` with Python's jsonschema (a validator
/// nobody here wrote), writing them to `dir`; returns how many were validated.
pub fn validate_documents(dir: &Path, schema: &str, docs: &[Value]) -> usize {
    let file = dir.join(format!("published-{schema}.json"));
    std::fs::write(&file, serde_json::to_vec(docs).unwrap()).unwrap();
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/validate_status.py"
        ))
        .arg(format!(
            "{}/docs/{schema}.schema.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(&file)
        .output()
        .expect("python with jsonschema (run scripts/test)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The Python interpreter with the reference clients (boto3, awscrt): `GG_S3_SYNC_PYTHON`,
/// else the project's `.venv`, else `python3`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("GG_S3_SYNC_PYTHON") {
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    if venv.exists() {
        return venv.to_string_lossy().into_owned();
    }
    "python3".into()
}

pub mod bytes_like {
    /// Anything a test seeds as object content.
    pub struct Data(pub Vec<u8>);
    impl From<&str> for Data {
        fn from(s: &str) -> Self {
            Self(s.as_bytes().to_vec())
        }
    }
    impl From<String> for Data {
        fn from(s: String) -> Self {
            Self(s.into_bytes())
        }
    }
    impl From<Vec<u8>> for Data {
        fn from(v: Vec<u8>) -> Self {
            Self(v)
        }
    }
    impl From<&[u8]> for Data {
        fn from(v: &[u8]) -> Self {
            Self(v.to_vec())
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Why a test tier that needs root and some programs cannot run here (`None`: it can).
pub fn missing_root_or_tools(why_root: &str, tools: &[&str]) -> Option<String> {
    let uid = std::process::Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some(format!("needs root ({why_root})"));
    }
    for tool in tools {
        let found = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (scripts/test installs it)"
            ));
        }
    }
    None
}
