//! Behind a real proxy (tinyproxy from Debian, with basic auth): the component runs in a
//! network namespace of its own whose only way out is the proxy, so any bypass fails. S3 is
//! reached over http through the proxy and over https through CONNECT, the credentials
//! endpoint through CONNECT (mutual TLS
//! inside the tunnel), and status over MQTT through CONNECT as well; `NO_PROXY` is honoured; a
//! wrong password is named with its fix and never printed. Needs root and iproute2; skips with the reason otherwise.

mod common;

use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{bin, Env};

/// A namespace joined to this one by a veth pair: `10.213.<n>.1` here, `.2` inside.
struct Netns {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
}

impl Netns {
    fn create() -> Result<Self, String> {
        let n = std::process::id() % 250 + 1;
        let name = format!("ggs3-proxy-{}", std::process::id());
        let host_if = format!("gvh{}", std::process::id() % 100_000);
        let peer_if = format!("gvc{}", std::process::id() % 100_000);
        let host_ip = Ipv4Addr::new(10, 213, u8::try_from(n).unwrap_or(1), 1);
        let peer_ip = Ipv4Addr::new(10, 213, u8::try_from(n).unwrap_or(1), 2);
        let ns = Self {
            name,
            host_if,
            host_ip,
        };
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), ns.name.clone()],
            vec![
                "link".into(),
                "add".into(),
                ns.host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer_if.clone(),
                "netns".into(),
                ns.name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host_ip}/30"),
                "dev".into(),
                ns.host_if.clone(),
            ],
            vec!["link".into(), "set".into(), ns.host_if.clone(), "up".into()],
            vec![
                "-n".into(),
                ns.name.clone(),
                "addr".into(),
                "add".into(),
                format!("{peer_ip}/30"),
                "dev".into(),
                peer_if.clone(),
            ],
            vec![
                "-n".into(),
                ns.name.clone(),
                "link".into(),
                "set".into(),
                peer_if,
                "up".into(),
            ],
            vec![
                "-n".into(),
                ns.name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for args in steps {
            let out = Command::new("ip")
                .args(&args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

struct Proxy {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(dir: &Path, ip: Ipv4Addr) -> Result<Proxy, String> {
    let port = TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let conf = dir.join("tinyproxy.conf");
    let log = dir.join("tinyproxy.log");
    // No ConnectPort lines: CONNECT to any port (the devstack's are random).
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen {ip}\nTimeout 60\nBasicAuth ggs3 s3cr3t-pass\nAllow {ip}/30\nLogLevel Connect\nLogFile \"{}\"\n",
            log.display()
        ),
    )
    .unwrap();
    let child = Command::new("tinyproxy")
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("tinyproxy: {e}"))?;
    for _ in 0..100 {
        if std::net::TcpStream::connect((ip, port)).is_ok() {
            return Ok(Proxy { child, port, log });
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    Err("tinyproxy did not start".into())
}

fn unavailable() -> Option<String> {
    common::missing_root_or_tools("network namespaces", &["ip", "tinyproxy"])
}

/// `gg-s3-sync once --json` inside the namespace, with `vars` as its environment's proxy part.
fn once_in(ns: &Netns, cfg: &Path, vars: &[(&str, String)]) -> Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name])
        .arg(bin())
        .args(["once", "--json", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info");
    for v in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "https_proxy",
        "http_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        c.env_remove(v);
    }
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn syncs_through_a_real_proxy_and_nothing_bypasses_it() {
    if let Some(why) = unavailable() {
        let _ = writeln!(std::io::stderr(), "\nSKIPPED proxy tests: {why}");
        return;
    }
    let env = Env::default().await;
    env.put("p/a.txt", "through the proxy").await;
    let ns = Netns::create().unwrap_or_else(|e| panic!("network namespace: {e}"));
    let proxy = start_proxy(env.tmp.path(), ns.host_ip).unwrap();
    let cfg = env.write_config(&env.config("p/", |_| {}));
    let url = |pass: &str| format!("http://ggs3:{pass}@{}:{}", ns.host_ip, proxy.port);
    let both = |pass: &str| vec![("HTTPS_PROXY", url(pass)), ("HTTP_PROXY", url(pass))];
    let (cfg2, ns_ref) = (cfg.clone(), &ns);
    let run = |vars: Vec<(&'static str, String)>| once_in(ns_ref, &cfg2, &vars);

    // 1. Without the proxy nothing is reachable: the namespace has no other way out.
    let out = tokio::task::block_in_place(|| run(vec![]));
    assert!(
        !out.status.success(),
        "reached the servers without the proxy"
    );

    // 2. Through the proxy: credentials over CONNECT, S3 over http. The lean GET takes the
    // proxy too: it never hands a request back to the SDK (which would also get through).
    let lean_debug = || ("RUST_LOG", "info,gg_s3_sync::sync::s3=debug".to_owned());
    let mut vars = both("s3cr3t-pass");
    vars.push(lean_debug());
    let out = tokio::task::block_in_place(|| run(vars));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("handed to the SDK"), "{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["downloaded"], 1, "{s}");
    assert_eq!(
        std::fs::read(env.local.join("a.txt")).unwrap(),
        b"through the proxy"
    );
    let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
    assert!(
        log.contains("CONNECT localhost:"),
        "the credentials endpoint went through CONNECT:\n{log}"
    );
    assert!(
        log.contains("GET http://127.0.0.1:"),
        "S3 went through the proxy:\n{log}"
    );
    assert!(
        !stderr.contains("s3cr3t-pass"),
        "the proxy password is never printed:\n{stderr}"
    );

    // 2b. S3 over https, as in production: the SDK tunnels through the proxy with CONNECT.
    // The SDK trusts the platform's CAs (rustls-native-certs, which reads SSL_CERT_FILE).
    let pki = env.stack.dir.join("pki");
    let front = devstack::tls_front::TlsFront::start(
        &std::fs::read_to_string(pki.join("server.pem")).unwrap(),
        &std::fs::read_to_string(pki.join("server.key")).unwrap(),
        (Ipv4Addr::LOCALHOST, 0).into(),
        env.stack.s3.addr(),
    )
    .await
    .unwrap();
    env.put("q/b.txt", "over https").await;
    let https_local = env.tmp.path().join("https-local");
    let https_cfg = env.write_config(&env.config("q/", |m| {
        m.insert(
            "s3EndpointUrl".into(),
            format!("https://localhost:{}", front.addr().port()).into(),
        );
        m.insert("localDir".into(), https_local.display().to_string().into());
    }));
    let mut vars = both("s3cr3t-pass");
    vars.push((
        "SSL_CERT_FILE",
        env.stack.ca.files.cert_path.display().to_string(),
    ));
    vars.push(lean_debug());
    let out = tokio::task::block_in_place(|| once_in(&ns, &https_cfg, &vars));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("handed to the SDK"), "{stderr}");
    assert_eq!(
        std::fs::read(https_local.join("b.txt")).unwrap(),
        b"over https"
    );
    let log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
    assert!(
        log.contains(&format!("CONNECT localhost:{}", front.addr().port())),
        "S3 over https went through CONNECT:\n{log}"
    );

    // `check` says which way each endpoint goes, without the password, and passes.
    let check = tokio::task::block_in_place(|| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name])
            .arg(bin())
            .args(["check", "--json", "--config"])
            .arg(&cfg);
        for (k, v) in both("s3cr3t-pass") {
            c.env(k, v);
        }
        c.output().unwrap()
    });
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains(&format!("via proxy http://{}:{}", ns.host_ip, proxy.port)),
        "{text}"
    );
    assert!(!text.contains("s3cr3t-pass"), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");

    // 3. NO_PROXY is honoured: S3's host goes direct, which cannot work here.
    let mut vars = both("s3cr3t-pass");
    vars.push(("NO_PROXY", "127.0.0.1".into()));
    let out = tokio::task::block_in_place(|| run(vars));
    assert!(
        !out.status.success(),
        "NO_PROXY ignored: S3 was still reached through the proxy"
    );

    // 4. A wrong password: named with the fix, never printed.
    std::fs::remove_file(env.local.join("a.txt")).unwrap();
    let out = tokio::task::block_in_place(|| run(both("wrong-pass")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("proxy") && stderr.contains("HTTPS_PROXY"),
        "the error names the proxy and where its credentials come from:\n{stderr}"
    );
    assert!(!stderr.contains("wrong-pass"), "{stderr}");

    // 5. Status over MQTT (outside Greengrass) tunnels through the proxy with CONNECT too.
    let (_broker, mqtt_port) = common::mosquitto::broker(&env);
    let topic = format!("gg-s3-sync/{}/status", env.stack.options.thing_name);
    let heard = env.tmp.path().join("mqtt-heard.txt");
    let _listener = common::mosquitto::Proc(
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &mqtt_port.to_string(),
                "-t",
                &topic,
            ])
            .args(["-i", "proxy-test-listener", "--cafile"])
            .arg(&env.stack.ca.files.cert_path)
            .arg("--cert")
            .arg(pki.join("device.pem"))
            .arg("--key")
            .arg(pki.join("device.key"))
            .stdout(std::fs::File::create(&heard).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mqtt_cfg = env.write_config(&env.config("p/", |m| {
        m.insert(
            "mqtt".into(),
            serde_json::json!({"endpoint": format!("localhost:{mqtt_port}")}),
        );
        m.insert("syncIntervalSeconds".into(), "3600".into());
    }));
    let run_mqtt = |pass: &str, log: &Path| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name])
            .arg(bin())
            .args(["run", "--config"])
            .arg(&mqtt_cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        for (k, v) in both(pass) {
            c.env(k, v);
        }
        common::mosquitto::Proc(c.spawn().unwrap())
    };
    // `check` names MQTT's path too.
    let check = tokio::task::block_in_place(|| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name])
            .arg(bin())
            .args(["check", "--json", "--config"])
            .arg(&mqtt_cfg);
        for (k, v) in both("s3cr3t-pass") {
            c.env(k, v);
        }
        c.output().unwrap()
    });
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains(&format!(
            "MQTT localhost:{mqtt_port}: via proxy http://{}:{}",
            ns.host_ip, proxy.port
        )),
        "{text}"
    );
    assert!(!text.contains("s3cr3t-pass"), "{text}");
    let mqtt_log = env.tmp.path().join("mqtt-component.log");
    let component = run_mqtt("s3cr3t-pass", &mqtt_log);
    let synced = wait_until(30, || {
        std::fs::read_to_string(&heard).is_ok_and(|t| t.contains("\"SYNCED\""))
    })
    .await;
    let log_text = std::fs::read_to_string(&mqtt_log).unwrap_or_default();
    assert!(synced, "no SYNCED status over MQTT:\n{log_text}");
    let proxy_log = std::fs::read_to_string(&proxy.log).unwrap_or_default();
    assert!(
        proxy_log.contains(&format!("CONNECT localhost:{mqtt_port}")),
        "MQTT went through CONNECT:\n{proxy_log}"
    );
    assert!(
        log_text.contains("MQTT goes through the proxy"),
        "{log_text}"
    );
    assert!(!log_text.contains("s3cr3t-pass"), "{log_text}");
    drop(component);

    // 6. A wrong password on the MQTT tunnel is named with its fix, never printed.
    let bad_log = env.tmp.path().join("mqtt-bad.log");
    let component = run_mqtt("wrong-pass", &bad_log);
    let named = wait_until(30, || {
        std::fs::read_to_string(&bad_log)
            .is_ok_and(|t| t.contains("refused or broke the MQTT tunnel"))
    })
    .await;
    drop(component);
    let bad = std::fs::read_to_string(&bad_log).unwrap_or_default();
    assert!(named, "{bad}");
    assert!(
        bad.contains("HTTPS_PROXY") && !bad.contains("wrong-pass"),
        "{bad}"
    );

    // 7. An https:// proxy (TLS to the proxy itself) whose CA the user appended to the root CA
    // file, as the nucleus requires: the credentials endpoint, MQTT and S3 over https all go
    // through it, trusting the proxy (and S3's CA) from that file alone.
    let proxy_pki = env.tmp.path().join("proxy-pki");
    std::fs::create_dir_all(&proxy_pki).unwrap();
    let proxy_ca = devstack::pki::Ca::new(&proxy_pki, "corporate proxy CA", "proxy-ca").unwrap();
    let proxy_cert = proxy_ca
        .server_for_ip(&proxy_pki, "proxy", ns.host_ip.into())
        .unwrap();
    let tls_proxy = devstack::tls_front::TlsFront::start(
        &proxy_cert.cert_pem,
        &proxy_cert.key_pem,
        (ns.host_ip, 0).into(),
        (ns.host_ip, proxy.port).into(),
    )
    .await
    .unwrap();
    let roots = env.tmp.path().join("roots-with-proxy-ca.pem");
    std::fs::write(
        &roots,
        std::fs::read_to_string(&env.stack.ca.files.cert_path).unwrap()
            + &std::fs::read_to_string(&proxy_ca.files.cert_path).unwrap(),
    )
    .unwrap();
    let tls_cfg = env.write_config(&env.config("p/", |m| {
        m.insert(
            "mqtt".into(),
            serde_json::json!({"endpoint": format!("localhost:{mqtt_port}")}),
        );
        m.insert("syncIntervalSeconds".into(), "3600".into());
        m.insert("rootCaPath".into(), roots.display().to_string().into());
        m.insert(
            "s3EndpointUrl".into(),
            format!("https://localhost:{}", front.addr().port()).into(),
        );
        m.insert(
            "localDir".into(),
            env.tmp
                .path()
                .join("via-https-proxy")
                .display()
                .to_string()
                .into(),
        );
    }));
    let count = |path: &Path, needle: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .matches(needle)
            .count()
    };
    let connects_before = count(&proxy.log, "CONNECT localhost:");
    let heard_before = count(&heard, "\"SYNCED\"");
    let tls_log = env.tmp.path().join("mqtt-https-proxy.log");
    let component = {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name])
            .arg(bin())
            .args(["run", "--config"])
            .arg(&tls_cfg)
            .env("RUST_LOG", "info")
            .env(
                "HTTPS_PROXY",
                format!(
                    "https://ggs3:s3cr3t-pass@{}:{}",
                    ns.host_ip,
                    tls_proxy.addr().port()
                ),
            )
            .env_remove("SSL_CERT_FILE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&tls_log).unwrap());
        common::mosquitto::Proc(c.spawn().unwrap())
    };
    let synced = wait_until(30, || count(&heard, "\"SYNCED\"") > heard_before).await;
    drop(component);
    let log_text = std::fs::read_to_string(&tls_log).unwrap_or_default();
    assert!(
        synced,
        "no SYNCED status through the https proxy:\n{log_text}"
    );
    let connects = count(&proxy.log, "CONNECT localhost:");
    assert!(
        connects >= connects_before + 3,
        "the credentials endpoint, MQTT and S3 all tunnelled through the https proxy \
         ({connects_before} CONNECTs before, {connects} after)"
    );
    assert_eq!(
        std::fs::read(env.tmp.path().join("via-https-proxy/a.txt")).unwrap(),
        b"through the proxy"
    );
    assert!(
        log_text.contains(&format!("proxy=https://{}", ns.host_ip)),
        "{log_text}"
    );
    assert!(!log_text.contains("s3cr3t-pass"), "{log_text}");
}

async fn wait_until(seconds: u64, ok: impl Fn() -> bool) -> bool {
    for _ in 0..seconds * 10 {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok()
}
