//! The fake nucleus checked by AWS's official Python IPC client (awsiotsdk, V2 client).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use devstack::nucleus::FakeNucleus;
use serde_json::{json, Value};

fn python() -> String {
    std::env::var("GG_S3_SYNC_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python3").to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn awsiotsdk_talks_to_the_fake_nucleus() {
    let dir = tempfile::tempdir().unwrap();
    let nucleus = FakeNucleus::start(dir.path()).await.unwrap();
    nucleus.set_nucleus_config(json!({"iotCredEndpoint": "abc.credentials.iot.eu-west-1.amazonaws.com", "awsRegion": "eu-west-1"}));
    let token =
        nucleus.register_component("com.example.Py", json!({"bucket": "b1", "prefix": "p/", "accessControl": devstack::nucleus::allow_all_access_control()}));

    let mut child = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/py/ipc_official_client.py"
        ))
        .arg(nucleus.socket())
        .arg(&token)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with awsiotsdk (run scripts/test)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::task::block_in_place(|| lines.next())
        .unwrap()
        .unwrap();
    assert_eq!(first, "SUBSCRIBED");
    nucleus.update_configuration("com.example.Py", &["prefix"], &json!("q/"));
    let last = tokio::task::block_in_place(|| lines.next())
        .unwrap()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out: Value = serde_json::from_str(&last).unwrap();

    assert_eq!(out["bad_token"], "AccessDeniedError", "{out}");
    assert_eq!(
        out["get"],
        json!({"componentName": "com.example.Py", "value": {"bucket": "b1"}}),
        "leaf wrapped in its name"
    );
    assert_eq!(
        out["nucleus"],
        json!({"iotCredEndpoint": "abc.credentials.iot.eu-west-1.amazonaws.com"})
    );
    assert_eq!(
        (&out["whole"]["bucket"], &out["whole"]["prefix"]),
        (&json!("b1"), &json!("p/"))
    );
    assert!(
        out["whole"].get("accessControl").is_some(),
        "the whole configuration includes accessControl"
    );
    assert_eq!(
        out["missing"],
        json!({"type": "ResourceNotFoundError", "message": "Key not found"})
    );
    assert_eq!(out["event_key_path"], json!(["prefix"]));

    assert_eq!(nucleus.states("com.example.Py"), ["RUNNING"]);
    let iot = nucleus.iot_publishes();
    assert_eq!(
        (
            iot[0].topic.as_str(),
            iot[0].qos.as_str(),
            &iot[0].payload[..]
        ),
        ("gg-s3-sync/py/status", "1", &b"hello iot"[..])
    );
    let local = nucleus.local_publishes();
    assert_eq!(
        (local[0].topic.as_str(), &local[0].message),
        ("gg-s3-sync/status", &json!({"from": "python"}))
    );
    assert!(nucleus.wait_until(Duration::from_secs(1), |_| true).await);
}
