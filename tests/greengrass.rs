//! Greengrass mode end to end: the real binary started as a nucleus starts it, against the
//! fake nucleus and the devstack.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{bin, noise, tree, Env};
use devstack::nucleus::{FakeNucleus, Personality};
use serde_json::{json, Value};

const COMPONENT: &str = "com.example.GgS3Sync";

struct Gg {
    env: Env,
    nucleus: FakeNucleus,
    dir: PathBuf,
    token: String,
}

async fn setup(config: Value) -> Gg {
    setup_as(config, Personality::Classic).await
}

/// A Greengrass root for `personality`: the classic nucleus writes `system.*` to
/// `<root>/config/effectiveConfig.yaml`; lite keeps it in `config.yaml` + `config.d/` (here in
/// `<root>/etc-greengrass`, given as `GG_S3_SYNC_LITE_CONFIG_DIR`), with no effectiveConfig.
async fn setup_as(config: Value, personality: Personality) -> Gg {
    let env = Env::default().await;
    let dir = env.tmp.path().join("greengrass");
    let system = format!(
        "system:\n  certificateFilePath: \"{}\"\n  privateKeyPath: \"{}\"\n  rootCaPath: \"/nonexistent/rootCA.pem\"\n  thingName: \"{}\"\n",
        env.stack.device.cert_path.display(),
        env.stack.device.key_path.display(),
        env.stack.options.thing_name
    );
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::create_dir_all(dir.join("etc-greengrass/config.d")).unwrap();
    match personality {
        Personality::Classic => {
            std::fs::write(dir.join("config/effectiveConfig.yaml"), system).unwrap();
        }
        Personality::Lite => {
            // The key path in a config.d fragment overrides config.yaml's, as ggconfigd merges.
            std::fs::write(
                dir.join("etc-greengrass/config.yaml"),
                system.replace(
                    &env.stack.device.key_path.display().to_string(),
                    "/nonexistent/overridden.key",
                ),
            )
            .unwrap();
            std::fs::write(
                dir.join("etc-greengrass/config.d/key.yaml"),
                format!(
                    "system:\n  privateKeyPath: \"{}\"\n",
                    env.stack.device.key_path.display()
                ),
            )
            .unwrap();
        }
    }
    let nucleus = FakeNucleus::start_as(&dir, personality).await.unwrap();
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
        self.spawn_with(&[])
    }

    /// [`Self::spawn`] with more environment (what a recipe dependency adds).
    fn spawn_with(&self, vars: &[(&str, &str)]) -> Child {
        Command::new(bin())
            .envs(vars.iter().copied())
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
            .env(
                "GG_S3_SYNC_LITE_CONFIG_DIR",
                self.dir.join("etc-greengrass"),
            )
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

    /// Validates every status document against docs/status.schema.json, and every "release
    /// live" document against docs/release.schema.json; returns how many.
    fn validate_all_status_documents(&self) -> usize {
        let (releases, local): (Vec<_>, Vec<_>) = self
            .nucleus
            .local_publishes()
            .into_iter()
            .filter(|p| p.component == COMPONENT)
            .partition(|p| p.topic == "gg-s3-sync/release");
        let mut docs: Vec<Value> = local.into_iter().map(|p| p.message).collect();
        for p in self.nucleus.iot_publishes() {
            docs.push(serde_json::from_slice(&p.payload).expect("IoT Core payload is JSON"));
        }
        let releases: Vec<Value> = releases.into_iter().map(|p| p.message).collect();
        common::validate_documents(&self.dir, "status", &docs)
            + common::validate_documents(&self.dir, "release", &releases)
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
    assert_eq!(s["credentialsSource"], "iot", "{s}");
    assert_eq!(s["roleAlias"], gg.env.stack.options.role_alias, "{s}");
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

fn running(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

/// Released nucleus lite (v2.6.0) as it behaves: the nucleus's keys only under
/// aws.greengrass.NucleusLite, system.* only in its config files, UpdateState refused until its
/// health daemon is up, a 10,012-byte frame limit that closes the connection, and local JSON
/// deliveries limited to ~22 keys. A bucket full of hostile keys must not take the component
/// down, and a local subscriber must get every status document.
#[tokio::test(flavor = "multi_thread")]
async fn runs_on_released_nucleus_lite_with_a_bucket_full_of_problems() {
    let local = tempfile::tempdir().unwrap();
    let gg = setup_as(
        json!({
            "bucket": devstack::Options::default().bucket,
            "prefix": "a/",
            "localDir": local.path(),
            "syncIntervalSeconds": "3600",
        }),
        Personality::Lite,
    )
    .await;
    gg.nucleus.set_health_ready(false);
    gg.nucleus.update_configuration(
        COMPONENT,
        &[],
        &json!({"s3EndpointUrl": gg.env.stack.s3.url(), "s3ForcePathStyle": "true"}),
    );
    gg.env.put("a/1.txt", "one").await;
    for i in 0..300 {
        // Long hostile keys: each listed problem would be over a kilobyte.
        let key = format!("a/../{}/{i}", "x".repeat(900));
        gg.env
            .stack
            .s3
            .put_virtual_object(gg.env.bucket(), &key, "pwned");
    }
    // Another component watches the status topic, as a dashboard would.
    let token = gg.nucleus.register_component(
        "com.example.Dashboard",
        json!({"accessControl": devstack::nucleus::allow_all_access_control()}),
    );
    let watcher = gg_s3_sync::ipc::IpcClient::connect(gg.nucleus.socket(), &token)
        .await
        .unwrap();
    let mut seen = watcher
        .subscribe_to_topic("gg-s3-sync/status")
        .await
        .unwrap();
    let mut child = gg.spawn();

    let msg = tokio::time::timeout(Duration::from_secs(30), seen.next())
        .await
        .unwrap_or_else(|_| panic!("no local status; log:\n{}", gg.log()))
        .unwrap()
        .unwrap();
    let bytes = msg
        .binary_message
        .expect("status is a binary message")
        .message;
    let bytes = aws_smithy_types::base64::decode(bytes).unwrap();
    assert!(
        bytes.len() <= gg_s3_sync::status::MAX_DOCUMENT_BYTES,
        "{}",
        bytes.len()
    );
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["state"], "SYNCED", "{doc}");
    assert_eq!(doc["lastPass"]["skipped"], 300);
    assert_eq!(doc["truncated"], true);
    assert!(doc["lastPass"]["skippedKeys"].as_array().unwrap().len() <= 20);
    assert_eq!(std::fs::read(local.path().join("1.txt")).unwrap(), b"one");
    assert!(
        gg.nucleus
            .wait_until(Duration::from_secs(10), |n| !n.iot_publishes().is_empty())
            .await
    );
    assert!(gg.nucleus.iot_publishes()[0].payload.len() <= gg_s3_sync::status::MAX_DOCUMENT_BYTES);
    assert_eq!(gg.nucleus.connections_closed_for_size(), 0, "{}", gg.log());
    assert!(running(&mut child), "{}", gg.log());
    assert!(
        gg.nucleus.states(COMPONENT).is_empty(),
        "UpdateState was refused"
    );

    // The health daemon comes up: RUNNING is reported after the next pass.
    gg.nucleus.set_health_ready(true);
    watcher
        .publish_to_topic("gg-s3-sync/sync-now", json!({}))
        .await
        .unwrap();
    assert!(
        gg.nucleus
            .wait_until(Duration::from_secs(30), |n| n.states(COMPONENT)
                == ["RUNNING"])
            .await,
        "{}",
        gg.log()
    );
    let log = gg.log();
    for line in [
        "source=nucleus iotCredEndpoint (aws.greengrass.NucleusLite)",
        "source=nucleus iotRoleAlias (aws.greengrass.NucleusLite)",
        "etc-greengrass/config.d/key.yaml system.privateKeyPath",
        "etc-greengrass/config.yaml system.certificateFilePath",
    ] {
        assert!(log.contains(line), "({line}):\n{log}");
    }
    assert!(gg.validate_all_status_documents() >= 2);
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(wait_exit(child).await.code(), Some(0), "{}", gg.log());
}

/// The classic nucleus takes a DeferComponentUpdate only as the answer to an outstanding
/// preUpdateEvent. An answer that comes too late is refused, which must not end the component;
/// and a pass may hold an update back for maxDeferSeconds at most.
#[tokio::test(flavor = "multi_thread")]
async fn classic_deferral_survives_a_refused_answer_and_is_capped() {
    let local = tempfile::tempdir().unwrap();
    let gg = setup(json!({
        "bucket": devstack::Options::default().bucket,
        "prefix": "b/",
        "localDir": local.path(),
        "syncIntervalSeconds": "3600",
        "maxDeferSeconds": "2",
    }))
    .await;
    gg.nucleus.update_configuration(
        COMPONENT,
        &[],
        &json!({"s3EndpointUrl": gg.env.stack.s3.url(), "s3ForcePathStyle": "true"}),
    );
    // 4 MiB in 4 KiB chunks, 30 ms each: a pass of about half a minute.
    gg.env.put("b/big.bin", noise(4 << 20, 3)).await;
    gg.env.stack.s3.set_chunk_delay(Duration::from_millis(30));
    let mut child = gg.spawn();
    let l = local.path().to_owned();
    for _ in 0..1500 {
        if tree(&l).keys().any(|k| k.contains(".gg-s3-sync.")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gg.nucleus.subscribed_to_updates(COMPONENT), "{}", gg.log());

    // 1. The nucleus stops waiting at once (its timeout passed): the answer is refused.
    assert!(
        !gg.nucleus
            .component_update("too-late", Duration::ZERO)
            .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gg.log().contains("did not take the answer"), "{}", gg.log());
    assert!(
        running(&mut child),
        "a refused answer is not fatal:\n{}",
        gg.log()
    );

    // 2. The pass keeps deferring the next deployment for maxDeferSeconds (2 s), then stops
    // at a safe point and lets it proceed; the stopped pass resumes after the update.
    #[allow(clippy::disallowed_methods)] // measures the real component's real wait
    let started = std::time::Instant::now();
    assert!(
        gg.nucleus
            .component_update("d-2", Duration::from_secs(60))
            .await,
        "{}",
        gg.log()
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    let defers: Vec<u64> = gg
        .nucleus
        .defers()
        .iter()
        .filter(|d| d.deployment_id == "d-2")
        .map(|d| d.recheck_after_ms)
        .collect();
    assert!(
        defers[0] > 0 && defers[0] <= 2_000 && *defers.last().unwrap() == 0,
        "{defers:?}"
    );
    assert!(
        !local.path().join("big.bin").exists(),
        "the stopped pass left nothing under the final name"
    );
    gg.env.stack.s3.set_chunk_delay(Duration::ZERO);
    wait_file(local.path().join("big.bin")).await;
    let s = gg
        .status("the resumed pass", |m| m["state"] == "SYNCED")
        .await;
    assert_eq!(s["lastPass"]["downloaded"], 1, "{s}");
    assert_eq!(
        std::fs::read(local.path().join("big.bin")).unwrap(),
        noise(4 << 20, 3)
    );
    assert!(running(&mut child));
    let _ = child.kill();
}

/// A cloud deployment on the classic nucleus goes through Gson: a prefix deployed as 2024
/// arrives as 2024.0 and must still mean the folder 2024/. A trigger subscription the nucleus
/// ends is made again.
#[tokio::test(flavor = "multi_thread")]
async fn gson_numbers_and_an_ended_trigger_subscription() {
    let local = tempfile::tempdir().unwrap();
    let gg = setup(json!({
        "bucket": devstack::Options::default().bucket,
        "localDir": local.path(),
        "syncIntervalSeconds": 3600,
    }))
    .await;
    gg.nucleus.deploy_configuration(
        COMPONENT,
        &json!({
            "prefix": 2024,
            "syncIntervalSeconds": 3600,
            "s3EndpointUrl": gg.env.stack.s3.url(),
            "s3ForcePathStyle": true,
        }),
    );
    assert_eq!(
        gg.nucleus.configuration(COMPONENT)["prefix"].to_string(),
        "2024.0"
    );
    gg.env.put("2024/a.txt", "a").await;
    let mut child = gg.spawn();
    let s = gg
        .status("a pass of 2024/", |m| m["state"] == "SYNCED")
        .await;
    assert_eq!(s["prefix"], "2024/", "{s}");
    assert_eq!(std::fs::read(local.path().join("a.txt")).unwrap(), b"a");

    gg.nucleus.end_topic_subscriptions(COMPONENT);
    assert!(
        gg.nucleus
            .wait_until(Duration::from_secs(10), |n| n
                .subscribed_to_topic(COMPONENT, "gg-s3-sync/sync-now"))
            .await,
        "resubscribed:\n{}",
        gg.log()
    );
    gg.env.put("2024/b.txt", "b").await;
    gg.nucleus.publish_local("gg-s3-sync/sync-now", json!({}));
    wait_file(local.path().join("b.txt")).await;
    assert!(running(&mut child));
    let _ = child.kill();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

/// docs/deploy.md's non-root variant under the classic nucleus's real permissions
/// (Permissions.java): the root 0755, `<root>/config` 0700 (so effectiveConfig.yaml is out of
/// reach), the installer's key 0600 root, the IPC socket writable by all, the component's work
/// folder 0700 owned by its user, and the artifact as its recipe's Permission makes it.
#[tokio::test(flavor = "multi_thread")]
async fn runs_as_the_component_user_with_the_documented_settings() {
    const NOBODY: u32 = 65534;
    let gg = setup(json!({
        "bucket": devstack::Options::default().bucket,
        "prefix": "a/",
        "syncIntervalSeconds": "3600",
    }))
    .await;
    let root = gg.dir.clone();
    for p in [gg.env.tmp.path(), root.as_path()] {
        chmod(p, 0o755);
    }
    chmod(&root.join("config"), 0o700);
    chmod(&root.join("ipc.socket"), 0o666);
    // The installer's files, where discovery looks when effectiveConfig.yaml is unreadable.
    let copy = |from: &Path, name: &str, mode: u32| {
        std::fs::copy(from, root.join(name)).unwrap();
        chmod(&root.join(name), mode);
    };
    copy(&gg.env.stack.device.key_path, "privKey.key", 0o600);
    copy(&gg.env.stack.device.cert_path, "thingCert.crt", 0o644);
    copy(&gg.env.stack.ca.files.cert_path, "rootCA.pem", 0o644);
    let work = root.join("work").join(COMPONENT);
    std::fs::create_dir_all(&work).unwrap();
    chmod(&root.join("work"), 0o755);
    chown(&work, NOBODY, NOBODY);
    chmod(&work, 0o700);
    let local = root.join("content");
    std::fs::create_dir(&local).unwrap();
    chown(&local, NOBODY, NOBODY);
    gg.nucleus.update_configuration(
        COMPONENT,
        &[],
        &json!({"localDir": local, "s3EndpointUrl": gg.env.stack.s3.url(), "s3ForcePathStyle": "true"}),
    );
    gg.env.put("a/1.txt", "one").await;
    let artifact = root.join("gg-s3-sync-x86_64");
    std::fs::copy(bin(), &artifact).unwrap();
    let start = |log: &str| {
        // As the nucleus runs a lifecycle script: a shell as the component's user (setpriv still
        // holds its capabilities when it calls execve, so it would run any file).
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/bin/sh", "-c", "exec \"$0\" \"$@\""])
            .arg(&artifact)
            .args(["run", "--kernel-root"])
            .arg(&root)
            .arg("--work-dir")
            .arg(&work)
            .current_dir(&work)
            .env(
                "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
                root.join("ipc.socket"),
            )
            .env("SVCUID", &gg.token)
            .env("AWS_IOT_THING_NAME", &gg.env.stack.options.thing_name)
            .env("GG_ROOT_CA_PATH", root.join("rootCA.pem"))
            .env("GG_S3_SYNC_LITE_CONFIG_DIR", root.join("etc-greengrass"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join(log)).unwrap())
            .spawn()
            .unwrap()
    };

    // The default recipe's Permission (Execute: OWNER) leaves the root-owned artifact 0700.
    chmod(&artifact, 0o700);
    let status = wait_exit(start("owner-only.log")).await;
    assert!(!status.success(), "only root may run an OWNER artifact");

    // The --non-root recipe's Permission (Read/Execute: ALL): 0755. The key is still root's.
    chmod(&artifact, 0o755);
    let child = start("component.log");
    let s = gg
        .status("the unreadable key", |m| {
            m["error"]["code"] == "CredentialFileUnreadable"
        })
        .await;
    let message = s["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("privKey.key") && message.contains("uid 65534"),
        "{message}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert_eq!(wait_exit(child).await.code(), Some(0));

    // The documented fix: the component user's group may read the key.
    chown(&root.join("privKey.key"), 0, NOBODY);
    chmod(&root.join("privKey.key"), 0o640);
    let mut child = start("component.log");
    let s = gg
        .status("a pass as uid 65534", |m| m["state"] == "SYNCED")
        .await;
    assert_eq!(s["lastPass"]["downloaded"], 1, "{s}");
    let meta = std::fs::metadata(local.join("1.txt")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), NOBODY);
    assert!(running(&mut child));
    let log = gg.log();
    assert!(
        log.contains("source=installer default"),
        "effectiveConfig.yaml is unreadable in <root>/config (0700):\n{log}"
    );
    let _ = child.kill();
}

/// A device key in an HSM under the classic nucleus: the component depends on the nucleus's
/// TES, which hands it `AWS_CONTAINER_CREDENTIALS_FULL_URI` and its SVCUID as
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN`; it syncs with those credentials and every status
/// document says where they came from.
#[tokio::test(flavor = "multi_thread")]
async fn an_hsm_key_syncs_through_the_nucleus_tes_and_the_status_says_so() {
    let local = tempfile::tempdir().unwrap();
    let gg = setup(json!({
        "bucket": devstack::Options::default().bucket,
        "prefix": "h/",
        "localDir": local.path(),
        "privateKeyPath": "pkcs11:token=greengrass;object=device;type=private",
        // Not the one TES uses: the nucleus exchanges for its own iotRoleAlias.
        "roleAlias": "component-own-alias",
        "s3EndpointUrl": "",
        "syncIntervalSeconds": "3600",
    }))
    .await;
    gg.nucleus.update_configuration(
        COMPONENT,
        &[],
        &json!({"s3EndpointUrl": gg.env.stack.s3.url(), "s3ForcePathStyle": "true"}),
    );
    gg.env.put("h/k.txt", "kept in a TPM").await;
    let tes = gg
        .env
        .stack
        .start_tes(devstack::tes::Flavor::Classic, 0, &gg.token)
        .await
        .unwrap();
    let uri = tes.uri();
    let mut child = gg.spawn_with(&[
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", &gg.token),
    ]);
    let s = gg
        .status("a pass through TES", |m| m["state"] == "SYNCED")
        .await;
    assert_eq!(s["credentialsSource"], "tes", "{s}");
    assert_eq!(s["roleAlias"], gg.env.stack.options.role_alias, "{s}");
    assert_eq!(s["lastPass"]["downloaded"], 1, "{s}");
    assert_eq!(
        std::fs::read(local.path().join("k.txt")).unwrap(),
        b"kept in a TPM"
    );
    let iot = gg.nucleus.iot_publishes();
    let last: Value = serde_json::from_slice(&iot.last().unwrap().payload).unwrap();
    assert_eq!(last["credentialsSource"], "tes", "{last}");
    assert!(!gg.log().contains(&gg.token), "the SVCUID is never logged");
    let _ = child.kill();
    let _ = child.wait();
}

/// With releases on under Greengrass: each switch publishes "release live" on the release
/// topic (allowed by the recipe's accessControl), the status carries the live and previous
/// releases, and `{"rollback": "previous"}` on the trigger topic switches back.
#[tokio::test(flavor = "multi_thread")]
async fn releases_publish_release_live_and_roll_back_on_a_trigger_message() {
    let parent = tempfile::tempdir().unwrap();
    let local = parent.path().join("site");
    let gg = setup(json!({
        "bucket": devstack::Options::default().bucket,
        "prefix": "w/",
        "localDir": local,
        "syncIntervalSeconds": 3600,
        "releases": {"keep": 3},
    }))
    .await;
    gg.nucleus.update_configuration(
        COMPONENT,
        &[],
        &json!({"s3EndpointUrl": gg.env.stack.s3.url(), "s3ForcePathStyle": true}),
    );
    gg.env.put("w/index.html", "v1").await;
    let mut child = gg.spawn();
    let release_docs = |gg: &Gg| -> Vec<Value> {
        gg.nucleus
            .local_publishes()
            .into_iter()
            .filter(|p| p.topic == "gg-s3-sync/release")
            .map(|p| {
                assert!(p.binary, "release live is a binary message");
                p.message
            })
            .collect()
    };
    let s = gg
        .status("a first release", |m| m["state"] == "SYNCED")
        .await;
    let first = s["lastPass"]["release"]["live"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(std::fs::read(local.join("index.html")).unwrap(), b"v1");
    assert!(
        gg.nucleus
            .wait_until(Duration::from_secs(10), |n| n
                .local_publishes()
                .iter()
                .any(|p| p.topic == "gg-s3-sync/release"))
            .await,
        "{}",
        gg.log()
    );
    let doc = &release_docs(&gg)[0];
    assert_eq!(
        (doc["event"].as_str(), doc["cause"].as_str()),
        (Some("releaseLive"), Some("sync")),
        "{doc}"
    );
    assert_eq!(doc["release"]["id"], first.as_str());
    assert_eq!(doc["localDir"], local.display().to_string());

    gg.env.put("w/index.html", "v2").await;
    gg.nucleus.publish_local("gg-s3-sync/sync-now", json!({}));
    let s = gg
        .status("a second release", |m| {
            m["lastPass"]["release"]["previous"]["id"] == first.as_str()
        })
        .await;
    let second = s["lastPass"]["release"]["live"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(std::fs::read(local.join("index.html")).unwrap(), b"v2");

    gg.nucleus
        .publish_local("gg-s3-sync/sync-now", json!({"rollback": "previous"}));
    assert!(
        gg.nucleus
            .wait_until(Duration::from_secs(10), |n| n.local_publishes().iter().any(
                |p| p.topic == "gg-s3-sync/release" && p.message["cause"] == "rollback"
            ))
            .await,
        "{}",
        gg.log()
    );
    let doc = release_docs(&gg).into_iter().last().unwrap();
    assert_eq!(doc["release"]["id"], first.as_str(), "{doc}");
    assert_eq!(doc["previous"]["id"], second.as_str(), "{doc}");
    assert_eq!(std::fs::read(local.join("index.html")).unwrap(), b"v1");
    let s = gg
        .status("the rolled-back release", |m| {
            m["lastPass"]["release"]["live"]["id"] == first.as_str()
        })
        .await;
    assert_eq!(s["state"], "SYNCED", "{s}");

    // An unknown id is refused with the kept ones; nothing moves.
    gg.nucleus
        .publish_local("gg-s3-sync/sync-now", json!({"rollback": "000042-tdead"}));
    let s = gg
        .status("a refused rollback", |m| {
            m["error"]["code"] == "UnknownRelease"
        })
        .await;
    assert!(
        s["error"]["message"].as_str().unwrap().contains(&first),
        "{s}"
    );
    assert_eq!(std::fs::read(local.join("index.html")).unwrap(), b"v1");
    assert!(gg.validate_all_status_documents() > 0);
    assert!(running(&mut child), "{}", gg.log());
    let _ = child.kill();
}
