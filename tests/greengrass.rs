//! Greengrass mode end to end: the real binary started as a nucleus starts it, against the
//! fake nucleus and the devstack.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bin, noise, python, tree, Env};
use devstack::nucleus::FakeNucleus;
use serde_json::{json, Value};

const COMPONENT: &str = "com.example.GgS3Sync";

struct Gg {
    env: Env,
    nucleus: FakeNucleus,
    dir: PathBuf,
    token: String,
}

async fn setup(config: Value) -> Gg {
    let env = Env::default().await;
    let dir = env.tmp.path().join("greengrass");
    std::fs::create_dir_all(dir.join("config")).unwrap();
    // The nucleus's own files, where discovery finds the certificate and key.
    std::fs::write(
        dir.join("config/effectiveConfig.yaml"),
        format!(
            "system:\n  certificateFilePath: \"{}\"\n  privateKeyPath: \"{}\"\n  rootCaPath: \"/nonexistent/rootCA.pem\"\n  thingName: \"{}\"\n",
            env.stack.device.cert_path.display(),
            env.stack.device.key_path.display(),
            env.stack.options.thing_name
        ),
    )
    .unwrap();
    let nucleus = FakeNucleus::start(&dir).await.unwrap();
    nucleus.set_nucleus_config(json!({
        "iotCredEndpoint": env.stack.credentials_endpoint(),
        "awsRegion": "us-east-1",
        "iotRoleAlias": env.stack.options.role_alias,
    }));
    let mut config = config;
    if config.get("accessControl").is_none() {
        // What the recipe's DefaultConfiguration gives a deployment.
        config["accessControl"] = devstack::nucleus::recipe_access_control(COMPONENT);
    }
    let token = nucleus.register_component(COMPONENT, config);
    Gg {
        env,
        nucleus,
        dir,
        token,
    }
}

impl Gg {
    fn spawn(&self) -> Child {
        Command::new(bin())
            .args(["run", "--kernel-root"])
            .arg(&self.dir)
            .current_dir(&self.dir)
            // Relative, as the nucleus passes it when the absolute path is too long.
            .env(
                "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
                "ipc.socket",
            )
            .env("SVCUID", &self.token)
            .env("AWS_IOT_THING_NAME", &self.env.stack.options.thing_name)
            .env("GG_ROOT_CA_PATH", &self.env.stack.ca.files.cert_path)
            .env_remove("AWS_REGION")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("component.log")).unwrap())
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("component.log")).unwrap_or_default()
    }

    /// Waits for a local status document matching `pred`.
    async fn status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let found = self
            .nucleus
            .wait_until(Duration::from_secs(30), |n| {
                n.local_publishes().iter().any(|p| pred(&p.message))
            })
            .await;
        assert!(
            found,
            "no status document with {what}; component log:\n{}",
            self.log()
        );
        self.nucleus
            .local_publishes()
            .into_iter()
            .map(|p| p.message)
            .rev()
            .find(|m| pred(m))
            .unwrap()
    }

    fn validate_all_status_documents(&self) -> usize {
        let mut docs: Vec<Value> = self
            .nucleus
            .local_publishes()
            .into_iter()
            .map(|p| p.message)
            .collect();
        for p in self.nucleus.iot_publishes() {
            docs.push(serde_json::from_slice(&p.payload).expect("IoT Core payload is JSON"));
        }
        let file = self.dir.join("published.json");
        std::fs::write(&file, serde_json::to_vec(&docs).unwrap()).unwrap();
        let out = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/py/validate_status.py"
            ))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/docs/status.schema.json"
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
}

async fn wait_file(path: PathBuf) {
    for _ in 0..1500 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never appeared", path.display());
}

async fn wait_exit(mut child: Child) -> std::process::ExitStatus {
    for _ in 0..1000 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    panic!("the component did not exit");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_as_a_greengrass_component() {
    let local = tempfile::tempdir().unwrap();
    let gg = setup(json!({
        // A stock deployment: bucket, localDir, and "" for the nucleus's role alias. The rest
        // (endpoint, region, thing, certificate, key, CA) is discovered.
        "bucket": devstack::Options::default().bucket,
        "prefix": "a/",
        "localDir": local.path(),
        "roleAlias": "",
        "s3EndpointUrl": "",
        "syncIntervalSeconds": "3600",
    }))
    .await;
    gg.nucleus.update_configuration(
        COMPONENT,
        &[],
        &json!({
            "s3EndpointUrl": gg.env.stack.s3.url(),
            "s3ForcePathStyle": "true",
        }),
    );
    gg.env.put("a/1.txt", "one").await;
    gg.env.put("a/2.txt", "two").await;
    gg.env.put("b/x.txt", "x").await;
    let child = gg.spawn();

    // 1. Configured from IPC + discovery; first pass; status on both topics; RUNNING.
    let s = gg.status("a first pass", |m| m["state"] == "SYNCED").await;
    assert_eq!(s["lastPass"]["downloaded"], 2, "{s}");
    assert_eq!(s["prefix"], "a/");
    assert_eq!(s["thingName"], gg.env.stack.options.thing_name);
    assert!(s["credentialsExpiration"].is_string());
    assert_eq!(tree(local.path()).len(), 2);
    assert_eq!(gg.nucleus.states(COMPONENT), ["RUNNING"]);
    let iot = gg.nucleus.iot_publishes();
    assert_eq!(
        iot[0].topic,
        format!("gg-s3-sync/{}/status", gg.env.stack.options.thing_name)
    );
    assert_eq!(iot[0].qos, "1");
    let log = gg.log();
    for line in [
        "source=nucleus iotCredEndpoint",
        "source=nucleus iotRoleAlias",
        "source=env GG_ROOT_CA_PATH",
        "source=effectiveConfig.yaml system.certificateFilePath",
    ] {
        assert!(
            log.contains(line),
            "startup log names where values came from ({line}):\n{log}"
        );
    }
    assert!(
        !log.contains("unknown configuration key"),
        "accessControl is not warned about:\n{log}"
    );

    // 2. A fleet-wide configuration update to a new prefix applies without restart.
    gg.nucleus
        .update_configuration(COMPONENT, &[], &json!({"prefix": "b/"}));
    let s = gg
        .status("a pass of the new prefix", |m| {
            m["prefix"] == "b/" && m["state"] == "SYNCED"
        })
        .await;
    assert_eq!(s["lastPass"]["downloaded"], 1, "{s}");
    assert!(local.path().join("x.txt").exists());
    let issued = || gg.env.stack.account.stats().credentials_issued;
    assert_eq!(issued(), 1, "a prefix change keeps the cached credentials");
    // A credentials setting changes: the cache is dropped and credentials fetched anew.
    gg.nucleus.update_configuration(
        COMPONENT,
        &[],
        &json!({"credentialsRefreshAheadSeconds": "600"}),
    );
    assert!(
        gg.nucleus
            .wait_until(Duration::from_secs(30), |_| issued() == 2)
            .await,
        "{}",
        gg.log()
    );

    // 3. An invalid update is reported and the last good configuration kept.
    gg.nucleus
        .update_configuration(COMPONENT, &[], &json!({"maxConcurrency": "lots"}));
    let s = gg
        .status("the invalid configuration", |m| {
            m["error"]["code"] == "ConfigInvalid"
        })
        .await;
    let msg = s["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("maxConcurrency") && msg.contains("keeping the last good configuration"),
        "{msg}"
    );
    assert_eq!(s["prefix"], "b/", "still reports the configuration in use");
    let passes = |log: &str| log.matches("sync pass finished").count();
    let before = passes(&gg.log());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        passes(&gg.log()),
        before,
        "an invalid configuration starts no pass"
    );

    // 4. A trigger message starts a pass at once (the interval is an hour).
    gg.env.put("b/y.txt", "why").await;
    gg.nucleus
        .publish_local("gg-s3-sync/sync-now", json!({"reason": "test"}));
    wait_file(local.path().join("y.txt")).await;

    // 5. A component update during a pass is deferred until the pass ends.
    gg.env.put("b/big.bin", noise(2 << 20, 7)).await;
    gg.env.stack.s3.set_chunk_delay(Duration::from_millis(3));
    gg.nucleus.publish_local("gg-s3-sync/sync-now", json!({}));
    let l = local.path().to_owned();
    for _ in 0..1500 {
        if tree(&l).keys().any(|k| k.contains(".gg-s3-sync.")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gg.nucleus
            .component_update("deployment-1", Duration::from_secs(60))
            .await,
        "acknowledged after the pass"
    );
    assert_eq!(
        tree(local.path())["big.bin"],
        noise(2 << 20, 7),
        "the pass finished before the update proceeded"
    );
    let defers = gg.nucleus.defers();
    assert!(
        defers[0].recheck_after_ms > 0
            && defers[0]
                .message
                .as_deref()
                .is_some_and(|m| m.contains("sync pass")),
        "{defers:?}"
    );
    assert_eq!(defers.last().unwrap().recheck_after_ms, 0);

    // 6. Every published document validates against the documented schema.
    assert!(gg.validate_all_status_documents() >= 8);

    // 7. Losing the IPC connection makes the process exit non-zero (the nucleus restarts it).
    gg.nucleus.disconnect_all();
    let status = wait_exit(child).await;
    assert_eq!(status.code(), Some(3), "{}", gg.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_bad_tokens_fail() {
    let local = tempfile::tempdir().unwrap();
    let mut gg =
        setup(json!({"bucket": devstack::Options::default().bucket, "localDir": local.path()}))
            .await;
    gg.nucleus.update_configuration(
        COMPONENT,
        &[],
        &json!({"s3EndpointUrl": gg.env.stack.s3.url(), "s3ForcePathStyle": true}),
    );
    let child = gg.spawn();
    gg.status("a pass", |m| m["state"] == "SYNCED").await;
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = wait_exit(child).await;
    assert_eq!(status.code(), Some(0), "{}", gg.log());

    gg.token = "BADBADBADBADBAD0".into();
    let status = wait_exit(gg.spawn()).await;
    assert_eq!(status.code(), Some(3));
    assert!(
        gg.log().contains("refused the IPC connection"),
        "{}",
        gg.log()
    );
}

#[test]
fn run_without_config_outside_greengrass_explains() {
    let out = Command::new(bin())
        .arg("run")
        .env_remove("SVCUID")
        .env_remove("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not started by Greengrass"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ended_subscription_reports_errored_and_empty_topics_disable_publishing() {
    let local = tempfile::tempdir().unwrap();
    let gg = setup(json!({
        "bucket": devstack::Options::default().bucket,
        "localDir": local.path(),
        "localStatusTopic": "",
    }))
    .await;
    gg.nucleus.update_configuration(
        COMPONENT,
        &[],
        &json!({"s3EndpointUrl": gg.env.stack.s3.url(), "s3ForcePathStyle": true}),
    );
    let child = gg.spawn();
    assert!(
        gg.nucleus
            .wait_until(Duration::from_secs(30), |n| !n.iot_publishes().is_empty())
            .await,
        "{}",
        gg.log()
    );
    assert!(
        gg.nucleus.local_publishes().is_empty(),
        "localStatusTopic \"\" disables local status"
    );

    // The nucleus drops the configuration subscription: a restart fixes that, so ERRORED + exit.
    gg.nucleus.end_configuration_subscriptions(COMPONENT);
    let status = wait_exit(child).await;
    assert_eq!(status.code(), Some(3), "{}", gg.log());
    assert_eq!(gg.nucleus.states(COMPONENT), ["RUNNING", "ERRORED"]);
}
