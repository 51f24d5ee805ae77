//! `devstack fleet`: many `gg-s3-sync run` devices against one stack, and the requests per
//! second that reach S3 and the credentials provider over time (bench/fleet draws them).
//!
//! Every device has its own certificate (its own thing) and its own folders, and starts at the
//! same moment (the worst case: a deployment that reaches the whole fleet at once). At
//! `change_at` seconds the fleet's configuration changes (another prefix) and every device is
//! restarted with it, as a file-mode device is; under Greengrass a configuration update starts
//! a pass in the running process instead (no new credential exchange).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::account::Device;
use crate::{DevStack, Options};

/// What to simulate (also `devstack fleet`'s options).
#[derive(Debug, Clone, clap::Args)]
pub struct Plan {
    /// Devices (processes), each with its own certificate.
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// syncIntervalSeconds.
    #[arg(long, default_value_t = 20)]
    pub interval: u64,
    /// syncJitterPercent.
    #[arg(long, default_value_t = 10)]
    pub jitter: u64,
    /// Objects under each prefix (4 KiB each).
    #[arg(long, default_value_t = 20)]
    pub objects: usize,
    /// Seconds until the fleet-wide configuration change (another prefix).
    #[arg(long, default_value_t = 100)]
    pub change_at: u64,
    /// Seconds in all.
    #[arg(long, default_value_t = 140)]
    pub duration: u64,
    /// The CSV written: `t,list,get,credentials` (cumulative counts, every 100 ms).
    #[arg(long, default_value = "fleet.csv")]
    pub out: PathBuf,
}

fn config(
    stack: &DevStack,
    dir: &Path,
    (i, files): (usize, &crate::pki::CertFiles),
    prefix: &str,
    plan: &Plan,
) -> Value {
    let mut c = stack.component_config(
        prefix,
        &dir.join(format!("local-{i}")),
        &dir.join(format!("state-{i}")),
    );
    c["certificateFilePath"] = files.cert_path.display().to_string().into();
    c["privateKeyPath"] = files.key_path.display().to_string().into();
    c["thingName"] = format!("fleet-thing-{i}").into();
    c["syncIntervalSeconds"] = plan.interval.to_string().into();
    c["syncJitterPercent"] = plan.jitter.to_string().into();
    c["maxConcurrency"] = "4".into();
    c
}

fn spawn(component: &Path, cfg: &Path) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(component)
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", component.display()))
}

async fn stop_all(children: &mut Vec<tokio::process::Child>) {
    for c in children.iter() {
        if let Some(pid) = c.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for c in children.iter_mut() {
        let _ = c.wait().await;
    }
    children.clear();
}

/// Runs the simulation with the gg-s3-sync binary `component` and writes the CSV.
///
/// # Errors
/// If the stack, a device or a process cannot be set up.
pub async fn run(component: &Path, plan: &Plan) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let stack = DevStack::start(&tmp.path().join("stack"), Options::default()).await?;
    let bucket = stack.options.bucket.clone();
    for (prefix, name) in [("fleet/a/", "a"), ("fleet/b/", "b")] {
        for i in 0..plan.objects {
            let data: Vec<u8> = (0..4096u32)
                .map(|b| b.wrapping_mul(31).wrapping_add(i as u32).to_le_bytes()[0])
                .collect();
            stack
                .s3
                .put_object(&bucket, &format!("{prefix}{name}{i:04}.bin"), data)
                .await?;
        }
    }
    let dir = tmp.path().join("devices");
    std::fs::create_dir_all(&dir)?;
    let mut configs = Vec::new();
    let mut certs = Vec::new();
    for i in 0..plan.devices {
        let files = stack.add_device(
            &format!("dev{i}"),
            Device {
                thing: Some(format!("fleet-thing-{i}")),
                allowed_aliases: vec!["*".into()],
                active: true,
            },
        )?;
        let path = dir.join(format!("config-{i}.json"));
        DevStack::write_config(&path, &config(&stack, &dir, (i, &files), "fleet/a/", plan))?;
        configs.push(path);
        certs.push(files);
    }
    let base = (
        stack.s3.list_count(),
        stack.s3.get_count(),
        stack.account.stats().credential_requests,
    );
    let mut csv = String::from("t,list,get,credentials\n");
    #[allow(clippy::disallowed_methods)] // the simulation's timeline is real time
    let started = tokio::time::Instant::now();
    let mut children = Vec::new();
    for cfg in &configs {
        children.push(spawn(component, cfg)?);
    }
    let mut changed = false;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let creds = stack.account.stats().credential_requests;
        csv.push_str(&format!(
            "{t:.2},{},{},{}\n",
            stack.s3.list_count() - base.0,
            stack.s3.get_count() - base.1,
            creds - base.2
        ));
        if !changed && t >= plan.change_at as f64 {
            changed = true;
            stop_all(&mut children).await;
            for (i, cfg) in configs.iter().enumerate() {
                DevStack::write_config(
                    cfg,
                    &config(&stack, &dir, (i, &certs[i]), "fleet/b/", plan),
                )?;
                children.push(spawn(component, cfg)?);
            }
        }
        if t >= plan.duration as f64 {
            break;
        }
    }
    stop_all(&mut children).await;
    std::fs::write(&plan.out, csv)
        .with_context(|| format!("cannot write {}", plan.out.display()))?;
    // Every device really synced the second prefix.
    let synced = (0..plan.devices)
        .filter(|i| {
            std::fs::read_dir(dir.join(format!("local-{i}")))
                .map(|d| d.count() >= 2 * plan.objects)
                .unwrap_or(false)
        })
        .count();
    println!(
        "fleet: {} devices, {} objects per prefix; {synced} devices hold the changed prefix; {}",
        plan.devices,
        plan.objects,
        plan.out.display()
    );
    stack.stop().await;
    anyhow::ensure!(
        synced == plan.devices,
        "only {synced} of {} devices synced the changed prefix",
        plan.devices
    );
    Ok(())
}
