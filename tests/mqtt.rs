//! Status over MQTT outside Greengrass, against Eclipse Mosquitto with a client-certificate
//! TLS listener, observed with mosquitto_sub (a client nobody here wrote).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bin, Env};
use devstack::Device;
use serde_json::{json, Value};

use common::mosquitto::{broker, broker_on, free_port, Proc};

/// Messages received: `(topic, JSON payload)`.
type Received = Arc<Mutex<Vec<(String, Value)>>>;

struct Client {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    port: u16,
}

impl Client {
    fn args(&self) -> Vec<String> {
        ["-h", "localhost", "-p", &self.port.to_string(), "--cafile"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain([
                self.ca.display().to_string(),
                "--cert".into(),
                self.cert.display().to_string(),
                "--key".into(),
                self.key.display().to_string(),
            ])
            .collect()
    }

    /// Collects `topic payload` lines from a subscription.
    fn subscribe(&self, filter: &str) -> (Proc, Received) {
        let mut child = Command::new("mosquitto_sub")
            .args(self.args())
            .args(["-t", filter, "-v", "-q", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub installed");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some((topic, payload)) = line.split_once(' ') {
                    if let Ok(v) = serde_json::from_str::<Value>(payload) {
                        sink.lock().unwrap().push((topic.to_owned(), v));
                    }
                }
            }
        });
        (Proc(child), lines)
    }

    fn publish(&self, topic: &str, message: &str) {
        let ok = Command::new("mosquitto_pub")
            .args(self.args())
            .args(["-t", topic, "-m", message, "-q", "1"])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// `gg-s3-sync run --config cfg`, logging to `component.log` in the test's folder.
fn run_component(env: &Env, cfg: &std::path::Path) -> std::process::Child {
    Command::new(bin())
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(env.tmp.path().join("component.log")).unwrap())
        .spawn()
        .unwrap()
}

/// A second device on the broker that watches the component's topics.
fn watcher(env: &Env, port: u16) -> Client {
    let files = env
        .stack
        .add_device(
            "watcher",
            Device {
                thing: Some("watcher".into()),
                allowed_aliases: vec![],
                active: true,
            },
        )
        .unwrap();
    Client {
        cert: files.cert_path,
        key: files.key_path,
        ca: env.stack.ca.files.cert_path.clone(),
        port,
    }
}

/// A configuration for `prefix` with status over MQTT on the broker at `port`, a pass an hour
/// (only triggers start others), and `edit` applied.
fn mqtt_config(
    env: &Env,
    prefix: &str,
    port: u16,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> std::path::PathBuf {
    env.write_config(&env.config(prefix, |m| {
        m.insert(
            "mqtt".into(),
            json!({"endpoint": format!("localhost:{port}")}),
        );
        m.insert("syncIntervalSeconds".into(), "3600".into());
        edit(m);
    }))
}

async fn wait_for(
    messages: &Arc<Mutex<Vec<(String, Value)>>>,
    what: &str,
    pred: impl Fn(&str, &Value) -> bool,
) -> Value {
    for _ in 0..1000 {
        if let Some((_, v)) = messages
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(t, v)| pred(t, v))
        {
            return v.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no MQTT message with {what}; got {:?}",
        messages.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_trigger_and_last_will_over_mqtt() {
    let env = Env::default().await;
    env.put("m/a.txt", "a").await;
    let (_broker, port) = broker(&env);
    let client = watcher(&env, port);
    let (_sub, messages) = client.subscribe("gg-s3-sync/#");
    tokio::time::sleep(Duration::from_millis(300)).await; // the subscription is in place

    let cfg = mqtt_config(&env, "m/", port, |_| {});
    let spawn = || run_component(&env, &cfg);
    let mut component = Proc(spawn());
    let topic = format!("gg-s3-sync/{}/status", env.stack.options.thing_name);
    let s = wait_for(&messages, "a SYNCED status", |t, v| {
        t == topic && v["state"] == "SYNCED"
    })
    .await;
    assert_eq!(s["lastPass"]["downloaded"], 1, "{s}");

    // A message on the trigger topic starts a pass at once (the interval is an hour).
    env.put("m/b.txt", "b").await;
    client.publish("gg-s3-sync/sync-now", "{}");
    wait_for(&messages, "the triggered pass", |_, v| {
        v["lastPass"]["downloaded"] == 1 && v["lastPass"]["unchanged"] == 1
    })
    .await;

    // kill -9: the broker publishes the last will.
    let _ = component.0.kill();
    let _ = component.0.wait();
    let will = wait_for(&messages, "the OFFLINE last will", |t, v| {
        t == topic && v["state"] == "OFFLINE"
    })
    .await;
    assert_eq!(will["thingName"], env.stack.options.thing_name);

    // A clean stop publishes OFFLINE itself (a clean disconnect sends no last will).
    let before = messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["state"] == "OFFLINE")
        .count();
    component = Proc(spawn());
    wait_for(&messages, "a second SYNCED status", |_, v| {
        v["state"] == "SYNCED" && v["lastPass"]["unchanged"] == 2
    })
    .await;
    assert!(Command::new("kill")
        .args(["-TERM", &component.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = component.0.wait().unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["state"] == "OFFLINE")
            .count()
            > before
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let offline = messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["state"] == "OFFLINE")
        .count();
    assert_eq!(offline, before + 1, "one OFFLINE from the clean stop");

    // Every document validates against the schema.
    let docs: Vec<Value> = messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t == topic)
        .map(|(_, v)| v.clone())
        .collect();
    assert!(docs.len() >= 5, "{docs:?}");
    common::validate_documents(env.tmp.path(), "status", &docs);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_does_not_stop_syncing() {
    let env = Env::default().await;
    env.put("m/a.txt", "a").await;
    let port = free_port(); // nothing listens
    let s = env
        .once_with("m/", |m| {
            m.insert(
                "mqtt".into(),
                json!({"endpoint": format!("localhost:{port}")}),
            );
        })
        .await
        .assert_ok();
    assert_eq!(s["downloaded"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_and_resubscribes_after_the_broker_restarts() {
    let env = Env::default().await;
    env.put("r/a.txt", "a").await;
    let (broker1, port) = broker(&env);
    let client = watcher(&env, port);
    let cfg = mqtt_config(&env, "r/", port, |_| {});
    let _component = Proc(
        Command::new(bin())
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(env.tmp.path().join("component.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(env.tmp.path().join("component.log")).unwrap_or_default();
    for _ in 0..500 {
        if log().contains("MQTT connected") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(log().contains("MQTT connected"), "{}", log());

    drop(broker1); // the broker goes away...
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_broker2, _) = broker_on(&env, port); // ...and comes back
    for _ in 0..1500 {
        if log().matches("MQTT connected").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        log().matches("MQTT connected").count() >= 2,
        "reconnected:\n{}",
        log()
    );

    // The trigger subscription was renewed on the new connection.
    let (_sub, messages) = client.subscribe("gg-s3-sync/+/status");
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.put("r/b.txt", "b").await;
    client.publish("gg-s3-sync/sync-now", "{}");
    wait_for(&messages, "a pass triggered after the reconnect", |_, v| {
        v["lastPass"]["downloaded"] == 1 && v["lastPass"]["unchanged"] == 1
    })
    .await;
}

/// rumqttc refuses publishes over 10 KiB by default, drops the connection, and the broker then
/// fires the OFFLINE last will: monitoring went dark exactly when a pass had many problems. The
/// status now fits the budget, and the client's limit is IoT Core's 128 KiB.
#[tokio::test(flavor = "multi_thread")]
async fn a_pass_with_many_problems_keeps_the_mqtt_connection() {
    let env = Env::default().await;
    env.put("m/a.txt", "a").await;
    for i in 0..300 {
        let key = format!("m/../{}/{i}", "x".repeat(900));
        env.stack.s3.put_virtual_object(env.bucket(), &key, "pwned");
    }
    let (_broker, port) = broker(&env);
    let client = watcher(&env, port);
    let (_sub, messages) = client.subscribe("gg-s3-sync/#");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = mqtt_config(&env, "m/", port, |_| {});
    let log = env.tmp.path().join("component.log");
    let _component = Proc(run_component(&env, &cfg));
    let s = wait_for(&messages, "a status with 300 skipped keys", |_, v| {
        v["lastPass"]["skipped"] == 300
    })
    .await;
    assert_eq!(s["truncated"], true, "{s}");
    assert!(s.to_string().len() <= gg_s3_sync::status::MAX_DOCUMENT_BYTES);
    // A second pass: still connected, no last will in between.
    client.publish("gg-s3-sync/sync-now", "{}");
    for _ in 0..500 {
        if messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v["lastPass"]["skipped"] == 300)
            .count()
            >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = messages.lock().unwrap().clone();
    assert!(
        got.iter().all(|(_, v)| v["state"] != "OFFLINE"),
        "the connection dropped: {:?}\n{}",
        got.iter().map(|(_, v)| &v["state"]).collect::<Vec<_>>(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        got.len() >= 2,
        "the trigger reached the component over the same connection"
    );
}

/// With releases on in MQTT mode: "release live" arrives on the release topic after each
/// switch, and `{"rollback": null}` on the trigger topic switches back.
#[tokio::test(flavor = "multi_thread")]
async fn release_live_and_rollback_over_mqtt() {
    let env = Env::default().await;
    env.put("m/a.txt", "v1").await;
    let (_broker, port) = broker(&env);
    let client = watcher(&env, port);
    let (_sub, messages) = client.subscribe("gg-s3-sync/#");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = mqtt_config(&env, "m/", port, |m| {
        m.insert("releases".into(), json!({"keep": 2}));
    });
    let _component = Proc(run_component(&env, &cfg));
    let first = wait_for(&messages, "a first release", |t, v| {
        t == "gg-s3-sync/release" && v["cause"] == "sync"
    })
    .await;
    let first_id = first["release"]["id"].clone();
    env.put("m/a.txt", "v2").await;
    client.publish("gg-s3-sync/sync-now", "{}");
    wait_for(&messages, "a second release", |t, v| {
        t == "gg-s3-sync/release" && v["previous"]["id"] == first_id
    })
    .await;
    assert_eq!(std::fs::read(env.local.join("a.txt")).unwrap(), b"v2");
    client.publish("gg-s3-sync/sync-now", r#"{"rollback": null}"#);
    let back = wait_for(&messages, "a rollback", |t, v| {
        t == "gg-s3-sync/release" && v["cause"] == "rollback"
    })
    .await;
    assert_eq!(back["release"]["id"], first_id, "{back}");
    assert_eq!(std::fs::read(env.local.join("a.txt")).unwrap(), b"v1");
    let docs: Vec<Value> = messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == "gg-s3-sync/release")
        .map(|(_, v)| v.clone())
        .collect();
    common::validate_documents(env.tmp.path(), "release", &docs);
}
