//! `devstack`: try gg-s3-sync with no AWS account.
//!
//! - `devstack demo`: start the local stack, seed a bucket, run `gg-s3-sync once` against it,
//!   show the synced tree, change an object and sync again, stop.
//! - `devstack serve`: start the stack and keep it running; prints the endpoints, a ready
//!   configuration file and environment variables for other clients (aws-cli, benchmarks).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use devstack::{DevStack, Options};

#[derive(Debug, Parser)]
#[command(
    name = "devstack",
    version,
    about = "Local S3 + AWS IoT credentials provider for gg-s3-sync"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the stack, seed a bucket, run the component, show the result, stop.
    Demo {
        /// The gg-s3-sync binary (default: next to this program).
        #[arg(long)]
        component: Option<PathBuf>,
        /// Start the component as a Greengrass nucleus would (IPC socket, SVCUID), configured
        /// only through a fake nucleus.
        #[arg(long)]
        greengrass: bool,
    },
    /// Many `gg-s3-sync run` devices against one stack: the requests per second reaching S3 and
    /// the credentials provider over time, as CSV (bench/fleet draws it; docs/fleet.md).
    Fleet {
        /// The gg-s3-sync binary (default: next to this program).
        #[arg(long)]
        component: Option<PathBuf>,
        #[command(flatten)]
        plan: devstack::fleet::Plan,
    },
    /// Start the stack with sample data and keep it running until Ctrl-C / SIGTERM.
    Serve {
        /// Folder for the PKI, S3 data and the generated config (kept after exit).
        #[arg(long, default_value = "devstack-data")]
        dir: PathBuf,
        /// S3 port (0 = any free port).
        #[arg(long, default_value_t = 0)]
        s3_port: u16,
        /// Credentials provider port (0 = any; awscrt's X.509 provider always uses 443).
        #[arg(long, default_value_t = 0)]
        credentials_port: u16,
    },
}

/// Objects the demo and `serve` start with, under `site-config/`.
fn sample_objects() -> Vec<(&'static str, Vec<u8>)> {
    let model: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    vec![
        (
            "site-config/app.yaml",
            b"mode: production\nthreshold: 0.75\n".to_vec(),
        ),
        (
            "site-config/docs/README.txt",
            b"Files in this folder are synced from S3 by gg-s3-sync.\n".to_vec(),
        ),
        ("site-config/models/model-v1.bin", model),
    ]
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo {
            component,
            greengrass: false,
        } => demo(component).await,
        Command::Demo {
            component,
            greengrass: true,
        } => demo_greengrass(component).await,
        Command::Serve {
            dir,
            s3_port,
            credentials_port,
        } => serve(&dir, s3_port, credentials_port).await,
        Command::Fleet { component, plan } => match component_path(component) {
            Ok(component) => devstack::fleet::run(&component, &plan)
                .await
                .map(|()| ExitCode::SUCCESS),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("devstack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn seed(stack: &DevStack) -> anyhow::Result<()> {
    let bucket = &stack.options.bucket;
    for (key, data) in sample_objects() {
        stack.s3.put_object(bucket, key, data).await?;
    }
    // A folder marker as the S3 console creates it (s3s-fs cannot store one), and a hostile
    // key, as an attacker with write access to the bucket could create.
    stack
        .s3
        .put_virtual_object(bucket, "site-config/empty-folder/", Vec::new());
    stack.s3.put_virtual_object(
        bucket,
        "site-config/../../escape.sh",
        b"#!/bin/sh\necho pwned\n".to_vec(),
    );
    Ok(())
}

fn component_path(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let me = std::env::current_exe().context("cannot locate this program")?;
    let sibling = me.with_file_name("gg-s3-sync");
    if sibling.exists() {
        return Ok(sibling);
    }
    bail!(
        "cannot find the gg-s3-sync binary next to {}; build it first (cargo build --workspace) or pass --component",
        me.display()
    )
}

async fn run_component(bin: &Path, config: &Path) -> anyhow::Result<bool> {
    println!("\n$ gg-s3-sync once --config {}", config.display());
    let status = tokio::process::Command::new(bin)
        .args(["once", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .status()
        .await
        .with_context(|| format!("cannot run {}", bin.display()))?;
    Ok(status.success())
}

fn print_tree(root: &Path) {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                files.push((p.clone(), None));
                stack.push(p);
            } else if let Ok(m) = e.metadata() {
                files.push((p, Some(m.len())));
            }
        }
    }
    files.sort();
    println!("\n{}/", root.display());
    for (p, size) in files {
        let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        match size {
            Some(n) => println!("  {rel}  ({n} bytes)"),
            None => println!("  {rel}/"),
        }
    }
}

async fn demo(component: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let bin = component_path(component)?;
    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let stack = DevStack::start(tmp.path(), Options::default()).await?;
    seed(&stack).await?;
    let local = tmp.path().join("synced");
    let config_path = tmp.path().join("gg-s3-sync.json");
    DevStack::write_config(
        &config_path,
        &stack.component_config("site-config/", &local, &tmp.path().join("state")),
    )?;
    println!("devstack is up:");
    println!("  S3                       {}", stack.s3.url());
    println!(
        "  IoT credentials provider https://{} (client certificate required)",
        stack.credentials_endpoint()
    );
    println!("  bucket s3://{}/site-config/ seeded with {} objects, a folder marker and the hostile key 'site-config/../../escape.sh'", stack.options.bucket, sample_objects().len());
    println!("  component config         {}", config_path.display());
    println!(
        "{}",
        std::fs::read_to_string(&config_path).unwrap_or_default()
    );

    let first = run_component(&bin, &config_path).await?;
    print_tree(&local);
    let escaped = tmp.path().join("escape.sh").exists()
        || local.parent().is_some_and(|p| p.join("escape.sh").exists());

    println!("\nChanging site-config/app.yaml in the bucket and syncing again (only that object is downloaded):");
    stack
        .s3
        .put_object(
            &stack.options.bucket,
            "site-config/app.yaml",
            b"mode: maintenance\nthreshold: 0.5\n".to_vec(),
        )
        .await?;
    let second = run_component(&bin, &config_path).await?;
    println!(
        "\ncredentials provider: {} request(s), {} credential set(s) issued; S3: {} GET(s), {} LIST(s)",
        stack.account.stats().credential_requests,
        stack.account.stats().credentials_issued,
        stack.s3.get_count(),
        stack.s3.list_count()
    );
    stack.stop().await;
    if escaped {
        bail!("the hostile key escaped localDir");
    }
    // The hostile key makes no pass fail; both passes must have succeeded.
    Ok(if first && second {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn demo_greengrass(component: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use devstack::nucleus::FakeNucleus;
    use serde_json::json;
    use std::time::Duration;

    const NAME: &str = "com.example.GgS3Sync";
    let bin = component_path(component)?;
    let tmp = tempfile::tempdir().context("cannot create a temporary folder")?;
    let stack = DevStack::start(&tmp.path().join("stack"), Options::default()).await?;
    seed(&stack).await?;
    // A Greengrass root: the nucleus's effective configuration names the device files.
    let root = tmp.path().join("greengrass");
    std::fs::create_dir_all(root.join("config"))?;
    std::fs::write(
        root.join("config/effectiveConfig.yaml"),
        format!(
            "system:\n  certificateFilePath: \"{}\"\n  privateKeyPath: \"{}\"\n  thingName: \"{}\"\n",
            stack.device.cert_path.display(),
            stack.device.key_path.display(),
            stack.options.thing_name
        ),
    )?;
    let nucleus = FakeNucleus::start(&root).await?;
    nucleus.set_nucleus_config(json!({
        "iotCredEndpoint": stack.credentials_endpoint(),
        "awsRegion": "us-east-1",
        "iotRoleAlias": stack.options.role_alias,
    }));
    let local = tmp.path().join("synced");
    let deployment = json!({
        "bucket": stack.options.bucket,
        "prefix": "site-config/",
        "localDir": local,
        "roleAlias": "",
        "s3EndpointUrl": stack.s3.url(),
        "s3ForcePathStyle": "true",
        "syncIntervalSeconds": "3600",
    });
    // The recipe's DefaultConfiguration brings the accessControl the component needs.
    let mut configuration = deployment.clone();
    configuration["accessControl"] = devstack::nucleus::recipe_access_control(NAME);
    let token = nucleus.register_component(NAME, configuration);
    println!(
        "fake nucleus on {}; the deployment configures only:",
        nucleus.socket().display()
    );
    println!("{}", serde_json::to_string_pretty(&deployment)?);
    println!("\n$ SVCUID=… AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT=ipc.socket gg-s3-sync run --kernel-root {}", root.display());
    let mut child = tokio::process::Command::new(&bin)
        .args(["run", "--kernel-root"])
        .arg(&root)
        .current_dir(&root)
        .env(
            "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
            "ipc.socket",
        )
        .env("SVCUID", &token)
        .env("AWS_IOT_THING_NAME", &stack.options.thing_name)
        .env("GG_ROOT_CA_PATH", &stack.ca.files.cert_path)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;

    let statuses = |n: &FakeNucleus| n.local_publishes().len();
    if !nucleus
        .wait_until(Duration::from_secs(30), |n| statuses(n) >= 1)
        .await
    {
        bail!("no status document from the component");
    }
    println!("\nstatus published on gg-s3-sync/status (and to IoT Core):");
    println!(
        "{}",
        serde_json::to_string_pretty(&nucleus.local_publishes()[0].message)?
    );
    print_tree(&local);

    println!(
        "\nA fleet-wide configuration update (prefix site-config/docs/) applies without a restart:"
    );
    nucleus.update_configuration(
        NAME,
        &[],
        &json!({"prefix": "site-config/docs/", "localDir": tmp.path().join("docs-only")}),
    );
    if !nucleus
        .wait_until(Duration::from_secs(30), |n| statuses(n) >= 2)
        .await
    {
        bail!("no status after the configuration update");
    }
    let second = nucleus.local_publishes()[1].message.clone();
    println!(
        "state {} for prefix {}: {} downloaded",
        second["state"], second["prefix"], second["lastPass"]["downloaded"]
    );
    print_tree(&tmp.path().join("docs-only"));

    println!("\nA message on gg-s3-sync/sync-now starts a pass at once:");
    nucleus.publish_local("gg-s3-sync/sync-now", json!({"reason": "demo"}));
    if !nucleus
        .wait_until(Duration::from_secs(30), |n| statuses(n) >= 3)
        .await
    {
        bail!("no status after the trigger");
    }
    println!("lifecycle states reported: {:?}", nucleus.states(NAME));
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    let status = child.wait().await?;
    println!("component stopped on SIGTERM with {status}");
    nucleus.stop().await;
    stack.stop().await;
    let ok = status.success() && nucleus.states(NAME) == ["RUNNING"] && second["state"] == "SYNCED";
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn serve(dir: &Path, s3_port: u16, credentials_port: u16) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let options = Options {
        s3_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, s3_port)),
        credentials_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, credentials_port)),
        ..Options::default()
    };
    let stack = DevStack::start(&dir, options).await?;
    seed(&stack).await?;
    let config_path = dir.join("gg-s3-sync.json");
    DevStack::write_config(
        &config_path,
        &stack.component_config("site-config/", &dir.join("synced"), &dir.join("state")),
    )?;
    let (ak, sk) = stack.account.admin_credentials();
    println!("S3_ENDPOINT={}", stack.s3.url());
    println!("CREDENTIALS_ENDPOINT={}", stack.credentials_endpoint());
    println!("BUCKET={}", stack.options.bucket);
    println!("ROLE_ALIAS={}", stack.options.role_alias);
    println!("THING_NAME={}", stack.options.thing_name);
    println!("DEVICE_CERT={}", stack.device.cert_path.display());
    println!("DEVICE_KEY={}", stack.device.key_path.display());
    println!("ROOT_CA={}", stack.ca.files.cert_path.display());
    println!("CONFIG={}", config_path.display());
    println!("# admin credentials for reference clients (aws-cli, s5cmd, rclone):");
    println!("AWS_ACCESS_KEY_ID={ak}");
    println!("AWS_SECRET_ACCESS_KEY={sk}");
    println!("AWS_DEFAULT_REGION=us-east-1");
    println!("READY");
    stop_signal().await;
    stack.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
