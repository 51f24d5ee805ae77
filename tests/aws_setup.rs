//! scripts/aws-setup.sh against a stub `aws` that records every call and policy document.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

struct Stub {
    dir: tempfile::TempDir,
}

impl Stub {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = format!(
            "#!/bin/sh\nexec '{}' '{}' \"$@\"\n",
            common::python(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/py/aws_stub.py")
                .display()
        );
        std::fs::write(bin.join("aws"), script).unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(bin.join("aws"))
            .status()
            .unwrap();
        Self { dir }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("calls.jsonl")
    }

    fn run(&self, state: &str, policy_doc: &str, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap()
        );
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/aws-setup.sh"))
            .args(args)
            .env("PATH", path)
            .env("AWS_STUB_LOG", self.log())
            .env("AWS_STUB_STATE", state)
            .env("AWS_STUB_POLICY_DOC", policy_doc)
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .output()
            .unwrap()
    }

    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn find<'a>(calls: &'a [Value], words: &[&str]) -> Option<&'a Value> {
    calls.iter().find(|c| {
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        words.iter().all(|w| args.contains(w))
    })
}

fn document(call: &Value) -> Value {
    let docs = call["documents"].as_object().unwrap();
    serde_json::from_str(docs.values().next().unwrap().as_str().unwrap()).unwrap()
}

const ARGS: &[&str] = &[
    "--bucket",
    "my-bucket",
    "--prefix",
    "site",
    "--thing-name",
    "t1",
    "--region",
    "eu-west-1",
];

#[test]
fn fresh_account_prefix_mode() {
    let stub = Stub::new();
    let out = stub.run("fresh", "", ARGS);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = stub.calls();
    assert!(
        calls
            .iter()
            .all(|c| c["args"][0] == "--region" && c["args"][1] == "eu-west-1"),
        "every call names the region"
    );

    let trust = document(find(&calls, &["iam", "create-role"]).expect("create-role"));
    assert_eq!(
        trust["Statement"][0]["Principal"]["Service"],
        "credentials.iot.amazonaws.com"
    );
    assert_eq!(trust["Statement"][0]["Action"], "sts:AssumeRole");

    let s3 = document(find(&calls, &["iam", "put-role-policy"]).expect("put-role-policy"));
    assert_eq!(s3["Statement"][0]["Action"], "s3:GetObject");
    assert_eq!(
        s3["Statement"][0]["Resource"],
        "arn:aws:s3:::my-bucket/site/*"
    );
    assert_eq!(s3["Statement"][1]["Action"], "s3:ListBucket");
    assert_eq!(s3["Statement"][1]["Resource"], "arn:aws:s3:::my-bucket");
    assert_eq!(
        s3["Statement"][1]["Condition"]["StringLike"]["s3:prefix"][0],
        "site/*"
    );

    let alias = find(&calls, &["iot", "create-role-alias"]).expect("create-role-alias");
    let a: Vec<&str> = alias["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        a.windows(2)
            .any(|w| w == ["--role-arn", "arn:aws:iam::123456789012:role/GgS3SyncRole"]),
        "{a:?}"
    );
    assert!(
        a.windows(2)
            .any(|w| w == ["--credential-duration-seconds", "3600"]),
        "{a:?}"
    );

    let iot = document(find(&calls, &["iot", "create-policy"]).expect("create-policy"));
    assert_eq!(
        iot["Statement"][0]["Action"],
        "iot:AssumeRoleWithCertificate"
    );
    assert_eq!(
        iot["Statement"][0]["Resource"],
        "arn:aws:iot:eu-west-1:123456789012:rolealias/GgS3SyncRoleAlias"
    );

    let attach = find(&calls, &["iot", "attach-policy"]).expect("attach-policy");
    assert!(attach["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v == "arn:aws:iot:eu-west-1:123456789012:cert/abc123"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("roleAlias: GgS3SyncRoleAlias"));
}

#[test]
fn keys_mode_grants_get_object_only_and_no_prefix_means_no_condition() {
    let stub = Stub::new();
    let mut args = ARGS.to_vec();
    args.extend(["--mode", "keys"]);
    assert!(stub.run("fresh", "", &args).status.success());
    let s3 = document(find(&stub.calls(), &["iam", "put-role-policy"]).unwrap());
    assert_eq!(s3["Statement"].as_array().unwrap().len(), 1, "{s3}");

    let stub = Stub::new();
    assert!(stub
        .run(
            "fresh",
            "",
            &[
                "--bucket",
                "b-1",
                "--thing-name",
                "t",
                "--region",
                "us-east-1"
            ]
        )
        .status
        .success());
    let s3 = document(find(&stub.calls(), &["iam", "put-role-policy"]).unwrap());
    assert_eq!(s3["Statement"][0]["Resource"], "arn:aws:s3:::b-1/*");
    assert!(
        s3["Statement"][1].get("Condition").is_none(),
        "listing the whole bucket has no s3:prefix: {s3}"
    );
}

#[test]
fn running_again_updates_instead_of_creating() {
    let stub = Stub::new();
    let doc = r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate", "Resource": "arn:aws:iot:eu-west-1:123456789012:rolealias/GgS3SyncRoleAlias"}]}"#;
    let out = stub.run("existing", doc, ARGS);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = stub.calls();
    for create in [
        "create-role",
        "create-role-alias",
        "create-policy",
        "create-policy-version",
    ] {
        assert!(
            find(&calls, &[create]).is_none(),
            "{create} on an existing setup"
        );
    }
    assert!(find(&calls, &["iam", "update-assume-role-policy"]).is_some());
    assert!(find(&calls, &["iot", "update-role-alias"]).is_some());
    assert!(find(&calls, &["iot", "attach-policy"]).is_some());
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));

    // A different existing IoT policy gets a new default version.
    let stub = Stub::new();
    assert!(stub
        .run("existing", r#"{"old": true}"#, ARGS)
        .status
        .success());
    assert!(find(
        &stub.calls(),
        &["iot", "create-policy-version", "--set-as-default"]
    )
    .is_some());
}

#[test]
fn dry_run_prints_everything_and_calls_nothing() {
    let stub = Stub::new();
    let mut args = ARGS.to_vec();
    args.push("--dry-run");
    let out = stub.run("fresh", "", &args);
    assert!(out.status.success());
    assert!(stub.calls().is_empty(), "no AWS call under --dry-run");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "aws iam create-role",
        "credentials.iot.amazonaws.com",
        "aws iot create-role-alias",
        "iot:AssumeRoleWithCertificate",
        "aws iot attach-policy",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
}

#[test]
fn bad_arguments_are_named() {
    let stub = Stub::new();
    let out = stub.run("fresh", "", &["--thing-name", "t", "--region", "r"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bucket is required"));
    let out = stub.run(
        "fresh",
        "",
        &[
            "--bucket",
            "b",
            "--thing-name",
            "t",
            "--region",
            "r",
            "--duration",
            "60",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("900 to 43200"));
    assert!(stub.calls().is_empty());
}
