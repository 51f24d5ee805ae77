//! The real nucleus lite: AWS's daemons (ggconfigd, ggipcd, ggpubsubd, gghealthd, iotcored)
//! and its recipe-runner, built from the pinned sources of the kit in `../shared/gglite` (see its
//! README), with gg-s3-sync deployed as a lite user deploys it: the recipe that
//! `scripts/build-component` renders, its DefaultConfiguration merged under the deployment's
//! keys, started through recipe-runner in the component's cgroup.
//!
//! Checked on v2.6.0 (the latest release) and main: RUNNING reported to gghealthd, objects
//! synced, status on IoT Core (iotcored → mosquitto) and on local pub/sub (received by a second
//! component written with AWS's Python client), a pass with 300 hostile keys keeps the
//! connection, a live configuration change, the trigger, and SIGTERM.
//!
//! Needs root, a writable cgroup v2 hierarchy and the kit; otherwise each test prints why it
//! is skipped. `GGLITE_KIT` points at the kit elsewhere; `GGLITE_WORK` caches its builds
//! (default `target/gglite`).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const WATCHER: &str = "com.example.StatusWatcher";

fn kit() -> PathBuf {
    std::env::var_os("GGLITE_KIT")
        .map_or_else(|| Path::new(ROOT).join("../shared/gglite"), PathBuf::from)
}

fn work() -> PathBuf {
    std::env::var_os("GGLITE_WORK")
        .map_or_else(|| Path::new(ROOT).join("target/gglite"), PathBuf::from)
}

/// Says why the tier cannot run here, on stderr past the test harness's capture.
fn skip(rev: &str, why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED real nucleus lite {rev}: {why}"
    );
}

/// Why the tier cannot run on this machine, if it cannot.
fn unavailable(rev: &str) -> Option<String> {
    if !kit().join("build.sh").exists() {
        return Some(format!(
            "the nucleus lite kit is not at {} (set GGLITE_KIT); its pinned sources are not fetched here",
            kit().display()
        ));
    }
    if let Some(why) = common::missing_root_or_tools(
        "core-bus sockets in /run/greengrass, cgroups, namespaces",
        &[
            "unshare",
            "mosquitto",
            "mosquitto_sub",
            "dbus-daemon",
            "cmake",
        ],
    ) {
        return Some(why);
    }
    let cgroup = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists());
    let Some(cgroup) = cgroup else {
        return Some("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified".into());
    };
    let probe = cgroup.join(format!("gg-s3-sync-probe-{}-{rev}", std::process::id()));
    if std::fs::create_dir(&probe).is_err() {
        return Some(format!("{} is not writable", cgroup.display()));
    }
    let _ = std::fs::remove_dir(&probe);
    None
}

/// Builds the revision (cached; the kit returns at once when built) and the kit's Python. One
/// at a time: the kit locks its builds per revision, but not its Python environment.
fn build(rev: &str) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = Command::new(kit().join("build.sh"))
        .env("GGLITE_REV", rev)
        .env("GGLITE_WORK", work())
        .env("GGLITE_APT", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building nucleus lite {rev}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(kit().join("setup-python.sh"))
        .env("GGLITE_WORK", work())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the kit's Python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the scenario inside the kit's namespaces (own /run/greengrass, loopback-only network),
/// by running this test binary's `inner` test there.
fn tier(rev: &str) {
    if let Some(why) = unavailable(rev) {
        skip(rev, &why);
        return;
    }
    build(rev);
    let me = std::env::current_exe().unwrap();
    let out = Command::new(kit().join("bin/gglite-ns"))
        .arg(&me)
        .args([
            "inner",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GGLITE_REV", rev)
        .env("GGLITE_WORK", work())
        .env("GGLITE_KIT", kit())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("test inner ... ok"),
        "real nucleus lite {rev}:\n{text}"
    );
}

#[test]
fn real_nucleus_lite_v2_6_0() {
    tier("v2.6.0");
}

#[test]
fn real_nucleus_lite_main() {
    tier("main");
}

// ---- inside the namespaces -----------------------------------------------------------------

struct Lite {
    rev: String,
    root: PathBuf,
    name: String,
    version: String,
}

impl Lite {
    fn kit_cmd(&self, script: &str) -> Command {
        let mut c = Command::new(kit().join(script));
        c.env("GGLITE_REV", &self.rev)
            .env("GGLITE_WORK", work())
            .env("GGLITE_ROOT", &self.root);
        c
    }

    fn run_ok(&self, mut c: Command, what: &str) -> String {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn config_set(&self, path: &str, value: &Value) {
        let mut c = self.kit_cmd("bin/gglite-config");
        c.args(["set", path, &value.to_string()]);
        self.run_ok(c, &format!("gglite-config set {path}"));
    }

    fn log(&self, daemon: &str) -> String {
        std::fs::read_to_string(self.root.join("logs").join(format!("{daemon}.log")))
            .unwrap_or_default()
    }

    fn component_log(&self) -> String {
        std::fs::read_to_string(self.root.join("logs/gg-s3-sync.out")).unwrap_or_default()
    }

    /// Starts a component's `run` phase through recipe-runner (the kit's wrapper).
    fn run_component(&self, name: &str, version: &str, env: &[(&str, &Path)], log: &str) -> Child {
        let mut c = self.kit_cmd("bin/gglite-component");
        c.args(["run", name, version, "run"]);
        for (k, v) in env {
            c.env(k, v);
        }
        let f = std::fs::File::create(self.root.join("logs").join(log)).unwrap();
        c.stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap()
    }

    fn exits(&self) -> String {
        std::fs::read_to_string(self.root.join(format!("logs/{}.exits", self.name)))
            .unwrap_or_default()
    }

    /// Waits until `cond` holds, up to 60 s; panics with `what` and the component's log.
    async fn wait(&self, what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..600 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what}\n--- component ---\n{}\n--- ggipcd ---\n{}\n--- exits ---\n{}",
            self.component_log(),
            tail(&self.log("ggipcd"), 40),
            self.exits()
        );
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn lines_json(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Status documents received over MQTT by `mosquitto_sub -v` ("topic payload" lines).
fn mqtt_docs(path: &Path) -> Vec<(String, Value)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (topic, payload) = l.split_once(' ')?;
            Some((topic.to_owned(), serde_json::from_str(payload).ok()?))
        })
        .collect()
}

/// The recipe's DefaultConfiguration under the deployment's keys: what a lite deployment
/// (ggdeploymentd) merges. The kit runs no deployment daemon, so the test merges it.
fn deployed_configuration(recipe: &Value, deployment: &Value) -> Value {
    let mut c = recipe["ComponentConfiguration"]["DefaultConfiguration"].clone();
    for (k, v) in deployment.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
#[ignore = "runs inside gglite-ns, started by real_nucleus_lite_*"]
fn inner() {
    assert_eq!(
        std::env::var("GGLITE_NS").as_deref(),
        Ok("1"),
        "run through real_nucleus_lite_*"
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario());
}

#[allow(clippy::too_many_lines)] // one story, told in order
async fn scenario() {
    let rev = std::env::var("GGLITE_REV").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let env = common::Env::start(devstack::Options::default()).await;
    let bucket = env.bucket().to_owned();
    env.put("a/1.txt", "one").await;
    env.put("a/sub/2.txt", "two").await;
    env.put("b/x.txt", "x").await;

    // 1. Lite with the devstack's PKI: mosquitto and the credentials provider share the CA,
    // and the nucleus names the devstack's credentials endpoint and role alias.
    let lite = Lite {
        rev: rev.clone(),
        root: tmp.path().join("root"),
        name: String::new(),
        version: String::new(),
    };
    let mut start = lite.kit_cmd("start.sh");
    start
        .env("GGLITE_PKI_DIR", env.stack.dir.join("pki"))
        .env("GGLITE_THING", &env.stack.options.thing_name)
        .env("GGLITE_CRED_ENDPOINT", env.stack.credentials_endpoint())
        .env("GGLITE_ROLE_ALIAS", &env.stack.options.role_alias)
        .env("GGLITE_DBUS", "1")
        .env("GGLITE_MQTT", "1");
    lite.run_ok(start, "start.sh");

    // 2. The component as `gdk component build` packages it.
    let build = tmp.path().join("greengrass-build");
    let venv_bin = Path::new(&common::python()).parent().unwrap().to_owned();
    let mut c = Command::new("bash");
    c.arg(Path::new(ROOT).join("scripts/build-component"))
        .args(["--binary", common::bin(), "--out"])
        .arg(&build)
        .env(
            "PATH",
            format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap()),
        );
    lite.run_ok(c, "scripts/build-component");
    let recipe_path = build.join("recipes/recipe.yaml");
    let recipe: Value =
        serde_norway::from_str(&std::fs::read_to_string(&recipe_path).unwrap()).unwrap();
    let lite = Lite {
        name: recipe["ComponentName"].as_str().unwrap().to_owned(),
        version: recipe["ComponentVersion"].as_str().unwrap().to_owned(),
        ..lite
    };
    let artifact = build.join(format!(
        "artifacts/{}/{}/gg-s3-sync-{}",
        lite.name,
        lite.version,
        std::env::consts::ARCH
    ));
    let mut c = lite.kit_cmd("bin/gglite-component");
    c.args(["put", &lite.name, &lite.version])
        .arg(&recipe_path)
        .arg(&artifact);
    lite.run_ok(c, "gglite-component put");
    let local = tmp.path().join("synced");
    // A stock deployment: bucket and localDir (plus where the devstack S3 is). Endpoint,
    // region, role alias, thing, certificate, key and CA are discovered from lite.
    let deployment = json!({
        "bucket": bucket,
        "prefix": "a/",
        "localDir": local,
        "s3EndpointUrl": env.stack.s3.url(),
        "s3ForcePathStyle": "true",
        "syncIntervalSeconds": "3600",
    });
    lite.config_set(
        &format!("services/{}/configuration", lite.name),
        &deployed_configuration(&recipe, &deployment),
    );

    // 3. A second component, written with AWS's Python client, watches the status topic.
    let mut c = lite.kit_cmd("bin/gglite-component");
    c.args(["put", WATCHER, "1.0.0"])
        .arg(Path::new(ROOT).join("tests/lite/watcher-recipe.yaml"))
        .arg(Path::new(ROOT).join("tests/lite/watcher.py"));
    lite.run_ok(c, "put the watcher");
    lite.config_set(
        &format!("services/{WATCHER}/configuration"),
        &json!({"accessControl": {"aws.greengrass.ipc.pubsub": {"w:1": {
            "operations": ["aws.greengrass#SubscribeToTopic", "aws.greengrass#PublishToTopic"],
            "resources": ["gg-s3-sync/status", "gg-s3-sync/sync-now", "gg-s3-sync/release"],
        }}}}),
    );
    let watch_out = tmp.path().join("watched.jsonl");
    let watch_trigger = tmp.path().join("trigger-request");
    let watch_rollback = tmp.path().join("rollback-request");
    let kit_python = work().join("venv/bin/python");
    let mut watcher = lite.run_component(
        WATCHER,
        "1.0.0",
        &[
            ("WATCH_OUT", &watch_out),
            ("WATCH_TRIGGER", &watch_trigger),
            ("WATCH_ROLLBACK", &watch_rollback),
            ("GGLITE_PYTHON", &kit_python),
        ],
        "watcher.out",
    );
    let ready = watch_out.with_extension("jsonl.ready");
    lite.wait("the watcher to subscribe", || ready.exists())
        .await;

    // 4. AWS IoT Core stands in as the kit's mosquitto; listen with the device certificate.
    let mqtt_out = tmp.path().join("mqtt.txt");
    let pki = env.stack.dir.join("pki");
    let mut mqtt_sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "8883",
            "-v",
            "-t",
            "gg-s3-sync/+/status",
            "--cafile",
        ])
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("device.pem"))
        .arg("--key")
        .arg(pki.join("device.key"))
        .args(["-i", "test-listener"])
        .stdout(std::fs::File::create(&mqtt_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // 5. The recipe's SOFT dependency on aws.greengrass.TokenExchangeService makes lite's
    // recipe-runner read the TES port from the config and refuse to start the component
    // without it (modules/recipe-runner/src/runner.c); tes-serverd writes it, as a string,
    // once it listens (modules/tes-serverd/src/http_server.c). The kit runs no tes-serverd:
    // a listener stands in for it. The device key is readable, so `auto` keeps to the
    // component's own role alias and never asks it.
    let tes_stand_in = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    lite.config_set(
        "services/aws.greengrass.TokenExchangeService/configuration/port",
        &json!(tes_stand_in.local_addr().unwrap().port().to_string()),
    );

    // 6. The component, through recipe-runner. The kit's config.yaml and config.d are where
    // /etc/greengrass would be.
    let mut component = lite.run_component(
        &lite.name,
        &lite.version,
        &[("GG_S3_SYNC_LITE_CONFIG_DIR", &lite.root)],
        "gg-s3-sync.out",
    );
    lite.wait("a.txt and sub/2.txt", || {
        local.join("1.txt").exists() && local.join("sub/2.txt").exists()
    })
    .await;
    lite.wait("a SYNCED status on local pub/sub", || {
        lines_json(&watch_out).iter().any(|r| {
            r["doc"]["state"] == "SYNCED"
                && r["doc"]["lastPass"]["downloaded"] == 2
                && r["doc"]["credentialsSource"] == "iot"
                && r["doc"]["roleAlias"] == env.stack.options.role_alias.as_str()
        })
    })
    .await;
    assert!(
        lines_json(&watch_out).iter().all(|r| r["binary"] == true),
        "status documents arrive as binary messages"
    );
    let thing = env.stack.options.thing_name.clone();
    lite.wait("a SYNCED status on IoT Core", || {
        mqtt_docs(&mqtt_out)
            .iter()
            .any(|(t, d)| *t == format!("gg-s3-sync/{thing}/status") && d["state"] == "SYNCED")
    })
    .await;
    lite.wait("RUNNING reported to gghealthd", || {
        lite.log("gghealthd")
            .contains(&format!("{} reported state updating to RUNNING", lite.name))
    })
    .await;
    let log = lite.component_log();
    for source in [
        "source=nucleus iotCredEndpoint (aws.greengrass.",
        "source=env GG_ROOT_CA_PATH",
        "config.yaml system.certificateFilePath",
        "config.yaml system.privateKeyPath",
    ] {
        assert!(log.contains(source), "({source}) in:\n{log}");
    }
    if rev == "v2.6.0" {
        assert!(
            log.contains("(aws.greengrass.NucleusLite)"),
            "released lite answers only to NucleusLite:\n{log}"
        );
    }

    // 7. A pass with 300 hostile keys (each over 900 bytes): the status stays within the
    // budget, the IPC connection stays up, and both sinks get it.
    for i in 0..300 {
        let key = format!("a/../{}/{i}", "x".repeat(900));
        env.stack.s3.put_virtual_object(&bucket, &key, "pwned");
    }
    std::fs::write(&watch_trigger, b"").unwrap();
    lite.wait(
        "a status with 300 skipped keys, locally and on IoT Core",
        || {
            let local_ok = lines_json(&watch_out)
                .iter()
                .any(|r| r["doc"]["lastPass"]["skipped"] == 300 && r["doc"]["truncated"] == true);
            let iot_ok = mqtt_docs(&mqtt_out)
                .iter()
                .any(|(_, d)| d["lastPass"]["skipped"] == 300);
            local_ok && iot_ok
        },
    )
    .await;
    assert!(
        !lite
            .log("ggipcd")
            .contains("does not fit in configured IPC buffer"),
        "a frame over lite's limit:\n{}",
        tail(&lite.log("ggipcd"), 20)
    );
    assert!(
        !lite.exits().contains("comm=gg-s3-sync"),
        "the component is still running: {}",
        lite.exits()
    );

    // 8. A live configuration change (a deployment's merge) applies without a restart.
    lite.config_set(
        &format!("services/{}/configuration/prefix", lite.name),
        &json!("b/"),
    );
    lite.wait("b/x.txt after the prefix change", || {
        local.join("x.txt").exists()
    })
    .await;
    lite.wait("a status for prefix b/", || {
        lines_json(&watch_out)
            .iter()
            .any(|r| r["doc"]["prefix"] == "b/" && r["doc"]["state"] == "SYNCED")
    })
    .await;

    // 9. The trigger, from the other component.
    env.put("b/y.txt", "why").await;
    std::fs::write(&watch_trigger, b"").unwrap();
    lite.wait("b/y.txt after the trigger", || local.join("y.txt").exists())
        .await;

    // 9b. Releases turned on by a live configuration change: the folder localDir was is
    // adopted, localDir becomes a link to a release, and "release live" reaches the other
    // component; a JSON {"rollback": null} from it switches back.
    let releases = |lite: &Lite| -> Vec<Value> {
        let _ = lite;
        lines_json(&watch_out)
            .into_iter()
            .filter(|r| r["topic"] == "gg-s3-sync/release")
            .map(|r| r["doc"].clone())
            .collect()
    };
    lite.config_set(
        &format!("services/{}/configuration/releases", lite.name),
        &json!({"keep": "3"}),
    );
    lite.wait("a first release live", || !releases(&lite).is_empty())
        .await;
    assert!(std::fs::symlink_metadata(&local)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(local.join("y.txt")).unwrap(), b"why");
    env.put("b/y.txt", "why two").await;
    std::fs::write(&watch_trigger, b"").unwrap();
    lite.wait("a second release live", || releases(&lite).len() >= 2)
        .await;
    assert_eq!(std::fs::read(local.join("y.txt")).unwrap(), b"why two");
    std::fs::write(&watch_rollback, b"").unwrap();
    lite.wait("a rollback", || {
        releases(&lite).iter().any(|d| d["cause"] == "rollback")
    })
    .await;
    assert_eq!(std::fs::read(local.join("y.txt")).unwrap(), b"why");
    let docs = releases(&lite);
    assert_eq!(
        docs[2]["release"]["id"], docs[0]["release"]["id"],
        "{docs:?}"
    );

    // 10. SIGTERM to the component's cgroup, as lite's systemd unit stops it: a clean exit 0.
    let mut c = lite.kit_cmd("bin/gglite-component");
    c.args(["stop", &lite.name, "10"]);
    lite.run_ok(c, "gglite-component stop (SIGTERM sufficed)");
    let _ = component.wait();
    // The kit's subreaper records the component's exit once it has reaped the orphan; the
    // component's last log line says the same ("stopped" is logged only on a clean exit 0).
    let clean = |lite: &Lite| {
        let exits = lite.exits();
        let recorded = exits
            .lines()
            .find(|l| l.contains("comm=gg-s3-sync") && !l.contains("phase=1"));
        match recorded {
            Some(l) => l.contains("exit=0"),
            None => lite
                .component_log()
                .lines()
                .last()
                .is_some_and(|l| l.contains("stopped")),
        }
    };
    lite.wait("a clean exit on SIGTERM", || clean(&lite)).await;
    assert!(
        !lite
            .exits()
            .lines()
            .any(|l| l.contains("comm=gg-s3-sync") && !l.contains("exit=0")),
        "{}",
        lite.exits()
    );
    assert!(
        std::fs::read_dir(&local)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".gg-s3-sync.")),
        "no temporary file left behind"
    );

    let mut c = lite.kit_cmd("bin/gglite-component");
    c.args(["stop", WATCHER, "5"]);
    let _ = c.output();
    let _ = watcher.wait();
    let _ = mqtt_sub.kill();
    let _ = mqtt_sub.wait();
    lite.run_ok(lite.kit_cmd("stop.sh"), "stop.sh");
    env.stack.stop().await;
}
