//! `devstack serve`: prints its endpoints and a ready configuration, serves, stops on SIGTERM.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn serve_prints_endpoints_and_config_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_devstack"))
        .args(["serve", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut vars = HashMap::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "READY" {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.to_owned(), v.to_owned());
        }
    }
    for k in [
        "S3_ENDPOINT",
        "CREDENTIALS_ENDPOINT",
        "CONFIG",
        "DEVICE_CERT",
        "DEVICE_KEY",
        "ROOT_CA",
        "AWS_ACCESS_KEY_ID",
    ] {
        assert!(vars.contains_key(k), "{k} missing from {vars:?}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&vars["CONFIG"]).unwrap()).unwrap();
    assert_eq!(
        config["s3EndpointUrl"].as_str(),
        Some(vars["S3_ENDPOINT"].as_str())
    );
    assert_eq!(
        config["credentialsEndpoint"].as_str(),
        Some(vars["CREDENTIALS_ENDPOINT"].as_str())
    );

    // The printed credentials endpoint and device files work as printed.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &vars["ROOT_CA"],
            "--cert",
            &vars["DEVICE_CERT"],
            "--key",
            &vars["DEVICE_KEY"],
        ])
        .arg(format!(
            "https://{}/role-aliases/{}/credentials",
            vars["CREDENTIALS_ENDPOINT"], vars["ROLE_ALIAS"]
        ))
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        body["credentials"]["accessKeyId"]
            .as_str()
            .unwrap()
            .starts_with("ASIA"),
        "{body}"
    );

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success(), "serve exits 0 on SIGTERM");
}
