//! The component against an S3 nobody here wrote: moto server with IAM/STS enforcement, and
//! session credentials minted by moto's STS for a role, served through an mTLS credentials
//! provider (`tests/py/moto_stack.py`). Guards against our own S3 fake hiding a bug.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::{once_args, python, run_async, tree};
use devstack::pki;
use serde_json::{json, Value};

struct Moto {
    child: Child,
    info: Value,
    tmp: tempfile::TempDir,
    ca: pki::Ca,
    device: pki::CertFiles,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(mode: &str) -> Moto {
    let tmp = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new(tmp.path(), "moto test CA", "ca").unwrap();
    let server = ca.server(tmp.path(), "server").unwrap();
    let device = ca.device(tmp.path(), "device", "moto-thing").unwrap();
    let mut child = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/moto_stack.py"
        ))
        .arg(mode)
        .arg(&ca.files.cert_path)
        .arg(&server.cert_path)
        .arg(&server.key_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.path().join("moto.log")).unwrap())
        .spawn()
        .expect("python with moto (run scripts/test)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(tmp.path().join("moto.log")).unwrap_or_default();
        panic!("moto stack did not start ({e}): {line:?}\n{log}")
    });
    Moto {
        child,
        info,
        tmp,
        ca,
        device,
    }
}

impl Moto {
    fn config(&self) -> std::path::PathBuf {
        let cfg = json!({
            "roleAlias": self.info["alias"],
            "bucket": self.info["bucket"],
            "prefix": "p/",
            "localDir": self.tmp.path().join("local"),
            "stateDir": self.tmp.path().join("state"),
            "region": "us-east-1",
            "s3EndpointUrl": self.info["s3"],
            "s3ForcePathStyle": true,
            "credentialsEndpoint": self.info["credentials"],
            "thingName": "moto-thing",
            "certificateFilePath": self.device.cert_path,
            "privateKeyPath": self.device.key_path,
            "rootCaPath": self.ca.files.cert_path,
        });
        let path = self.tmp.path().join("config.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        path
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn syncs_from_moto_with_sts_session_credentials() {
    let moto = tokio::task::spawn_blocking(|| start("read")).await.unwrap();
    let cfg = moto.config();
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(
        (s["downloaded"].as_u64(), s["failed"].as_u64()),
        (Some(3), Some(0)),
        "{s}"
    );
    let local = tree(&moto.tmp.path().join("local"));
    let expected = moto.info["objects"].as_object().unwrap();
    assert_eq!(local.len(), 3);
    for (rel, data) in &local {
        assert_eq!(expected[&format!("p/{rel}")], md5_hex(data), "{rel}");
    }
    let s = run_async(once_args(&cfg)).await.assert_ok();
    assert_eq!(
        (s["downloaded"].as_u64(), s["unchanged"].as_u64()),
        (Some(0), Some(3)),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_get_object_only_role_gives_the_list_bucket_fix() {
    let moto = tokio::task::spawn_blocking(|| start("getonly"))
        .await
        .unwrap();
    let r = run_async(once_args(&moto.config())).await;
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    assert!(
        r.stderr()
            .contains("s3:ListBucket on arn:aws:s3:::moto-bucket"),
        "{}",
        r.stderr()
    );
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
