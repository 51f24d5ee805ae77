//! The fake nucleus checked by AWS's official Python IPC client (awsiotsdk, V2 client).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use devstack::nucleus::{FakeNucleus, Personality};
use serde_json::{json, Value};

fn python() -> String {
    std::env::var("GG_S3_SYNC_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python3").to_owned())
}

/// Runs AWS's client against the fake; returns its report.
async fn report(personality: Personality) -> (FakeNucleus, Value, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let nucleus = FakeNucleus::start_as(dir.path(), personality)
        .await
        .unwrap();
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
    (nucleus, out, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn awsiotsdk_talks_to_the_fake_nucleus() {
    let (nucleus, out, _dir) = report(Personality::Classic).await;

    assert_eq!(out["bad_token"], "AccessDeniedError", "{out}");
    assert_eq!(
        out["get"],
        json!({"componentName": "com.example.Py", "value": {"bucket": "b1"}}),
        "leaf wrapped in its name"
    );
    assert_eq!(
        out["aws.greengrass.Nucleus"],
        json!({"iotCredEndpoint": "abc.credentials.iot.eu-west-1.amazonaws.com"})
    );
    assert_eq!(out["update_state"], "ok");
    assert_eq!(out["component_updates"], "ok");
    assert_eq!(out["binary_delivered"], json!({"binary": "{\"b\":1}"}));
    assert_eq!(out["json24_delivered"], json!({"json_keys": 24}));
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
    let status = local
        .iter()
        .find(|p| p.topic == "gg-s3-sync/status")
        .unwrap();
    assert_eq!(status.message, json!({"from": "python"}));
    assert!(local
        .iter()
        .any(|p| p.binary && p.message == json!({"b": 1})));
    assert!(nucleus.wait_until(Duration::from_secs(1), |_| true).await);
}

/// The lite personality, through AWS's client, answers as the kit's probe recorded real lite
/// v2.6.0 answering (shared/gglite/README.md, "Observed behaviour of lite").
#[tokio::test(flavor = "multi_thread")]
async fn awsiotsdk_sees_the_lite_personality_as_real_lite() {
    let (_nucleus, out, _dir) = report(Personality::Lite).await;
    assert_eq!(
        out["aws.greengrass.Nucleus"],
        json!({"type": "ResourceNotFoundError", "message": ""}),
        "{out}"
    );
    assert_eq!(
        out["aws.greengrass.NucleusLite"],
        json!({"iotCredEndpoint": "abc.credentials.iot.eu-west-1.amazonaws.com"})
    );
    assert_eq!(
        out["missing"],
        json!({"type": "ResourceNotFoundError", "message": ""}),
        "lite's errors carry no message"
    );
    assert_eq!(out["component_updates"], "ServiceError");
    assert_eq!(out["binary_delivered"], json!({"binary": "{\"b\":1}"}));
    assert_eq!(
        out["json24_delivered"],
        Value::Null,
        "a 24-key JSON message is not delivered on lite"
    );
}
