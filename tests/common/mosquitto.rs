//! Eclipse Mosquitto with a client-certificate TLS listener, from the devstack's PKI.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use super::Env;

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn mosquitto_bin() -> String {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .find(|p| Path::new(p).exists())
        .map_or_else(|| "mosquitto".to_owned(), |p| (*p).to_owned())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Mosquitto requiring client certificates from the devstack CA.
pub fn broker(env: &Env) -> (Proc, u16) {
    broker_on(env, free_port())
}

pub fn broker_on(env: &Env, port: u16) -> (Proc, u16) {
    let pki = env.stack.dir.join("pki");
    let conf = env.tmp.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings true\npersistence false\nuser root\nlog_dest stderr\n\
             listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n",
            ca = env.stack.ca.files.cert_path.display(),
            cert = pki.join("server.pem").display(),
            key = pki.join("server.key").display(),
        ),
    )
    .unwrap();
    let child = Proc(
        Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stderr(std::fs::File::create(env.tmp.path().join("mosquitto.log")).unwrap())
            .spawn()
            .expect("mosquitto installed (scripts/test installs it)"),
    );
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "mosquitto did not start: {}",
        std::fs::read_to_string(env.tmp.path().join("mosquitto.log")).unwrap_or_default()
    );
}
