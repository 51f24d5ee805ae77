//! `gg-s3-sync` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use gg_s3_sync::app::greengrass;
use gg_s3_sync::config::Config;
use gg_s3_sync::sync::{chain, Error as SyncError, Summary, SyncSettings};
use gg_s3_sync::{app, check, clock};

/// Keep a local folder in sync with an S3 prefix, authenticated by an AWS IoT device certificate.
#[derive(Debug, Parser)]
#[command(name = "gg-s3-sync", version, about)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sync now and then every syncIntervalSeconds until SIGTERM/SIGINT. Without --config,
    /// runs as a Greengrass component: configuration, status and events over IPC.
    Run {
        /// Configuration file (YAML or JSON). Omit under Greengrass.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The Greengrass root folder (the recipe passes {kernel:rootPath}); used to find the
        /// device certificate and key when the configuration does not name them.
        #[arg(long)]
        kernel_root: Option<PathBuf>,
        /// The component's work folder (the recipe passes {work:path}); default: the current one.
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// Check every step a sync depends on (configuration, files, credentials, S3, localDir,
    /// clock); exit 0 only when all pass. Without --config, checks the Greengrass deployment.
    Check {
        /// Configuration file (YAML or JSON). Omit under Greengrass.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The Greengrass root folder ({kernel:rootPath}).
        #[arg(long)]
        kernel_root: Option<PathBuf>,
        /// The component's work folder ({work:path}).
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
    /// Sync once; exit 0 if every object is in place, 1 otherwise.
    Once {
        /// Configuration file (YAML or JSON).
        #[arg(long)]
        config: PathBuf,
        /// Print the pass summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Print what would be downloaded, deleted and skipped, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the kept releases (with `releases` on): id, live or not, files, bytes, digest.
    Releases {
        /// Configuration file (YAML or JSON).
        #[arg(long)]
        config: PathBuf,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Switch localDir to a kept release at once (default: the one live before the current
    /// one). Later passes do not switch forward again until the content in S3 changes.
    Rollback {
        /// Configuration file (YAML or JSON).
        #[arg(long)]
        config: PathBuf,
        /// The release id to go back to (see `releases`).
        #[arg(long)]
        to: Option<String>,
    },
}

/// Exit code for a configuration problem (clap also uses 2 for usage errors).
const EXIT_CONFIG: u8 = 2;
/// Exit code when Greengrass IPC fails: the nucleus restarts the component.
const EXIT_IPC: u8 = 3;

/// The log format chosen, for [`fatal`].
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// A usage problem (exit 2 like an invalid configuration).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// Reports the error that ends the process, once: an `error:` line for people, or one log
/// record in JSON format (where a bare text line would break the stream).
fn fatal(text: &str) {
    match LOG_FORMAT.get() {
        Some(LogFormat::Json) => tracing::error!("{text}"),
        _ => eprintln!("error: {text}"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let _ = LOG_FORMAT.set(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            fatal(&format!("{e:#}"));
            // 2 only for what the user must fix in the configuration or the command line.
            let config = e.chain().any(|c| {
                c.downcast_ref::<gg_s3_sync::config::ConfigError>()
                    .is_some()
                    || c.downcast_ref::<Usage>().is_some()
            });
            if config {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let cancel = CancellationToken::new();
    tokio::spawn(stop_on_signal(cancel.clone()));
    let clock = clock::system();
    match cli.command {
        Command::Run {
            config: Some(config),
            ..
        } => {
            let config = load(&config)?;
            app::run(&config, clock, &cancel)
                .await
                .context("cannot start syncing")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config: None,
            kernel_root,
            work_dir,
        } => {
            let cwd = working_dir(work_dir)?;
            let Some(env) =
                greengrass::Environment::from_vars(|k| std::env::var(k).ok(), kernel_root, cwd)
            else {
                return Err(Usage(
                    "no --config given and not started by Greengrass (SVCUID and \
                     AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT are not set); pass --config FILE"
                        .into(),
                )
                .into());
            };
            match greengrass::run(env, clock, cancel).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    fatal(&format!(
                        "{}; exiting so the nucleus restarts the component",
                        chain(&e)
                    ));
                    Ok(ExitCode::from(EXIT_IPC))
                }
            }
        }
        Command::Check {
            config,
            json,
            kernel_root,
            work_dir,
        } => {
            let cwd = working_dir(work_dir)?;
            let loaded = match config {
                Some(path) => Config::load_file(&path, &cwd)
                    .map(|p| (p.config, p.warnings))
                    .map_err(|e| format!("{:#}", anyhow::Error::from(e))),
                None => match greengrass::Environment::from_vars(
                    |k| std::env::var(k).ok(),
                    kernel_root,
                    cwd,
                ) {
                    Some(env) => greengrass::load_config(&env).await,
                    None => Err(
                        "no --config given and not started by Greengrass (SVCUID and \
                                 AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT are not set)"
                            .to_owned(),
                    ),
                },
            };
            let (report, config) = check::configuration(loaded);
            let report = match config {
                Some(c) => check::run(report, &c, clock).await,
                None => report,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", report.human());
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Once {
            config,
            json,
            dry_run,
        } => {
            let config = load(&config)?;
            Ok(report_once(
                app::once(&config, clock, &cancel, dry_run).await,
                json,
            ))
        }
        Command::Releases { config, json } => Ok(list_releases(&load(&config)?, json)),
        Command::Rollback { config, to } => Ok(rollback(&load(&config)?, to.as_deref())),
    }
}

fn list_releases(config: &Config, json: bool) -> ExitCode {
    match gg_s3_sync::sync::list_releases(&SyncSettings::from(config)) {
        Ok(list) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(list) => {
            if list.is_empty() {
                println!("no releases yet");
            }
            for r in &list {
                println!(
                    "{} {:<24} {:>7} files {:>12} bytes  {}  built {}",
                    if r.live { "*" } else { " " },
                    r.id,
                    r.files,
                    r.bytes,
                    r.tree_digest.get(..16).unwrap_or("(no record)"),
                    r.created_at
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            fatal(&format!("{} ({})", chain(&e), e.code()));
            ExitCode::FAILURE
        }
    }
}

fn rollback(config: &Config, to: Option<&str>) -> ExitCode {
    let now = gg_s3_sync::credentials::rfc3339(clock::system().now());
    match gg_s3_sync::sync::rollback(&SyncSettings::from(config), to, &now) {
        Ok(r) if r.from == r.to => {
            println!("{} is already live", r.to);
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!(
                "rolled back: {} -> {} (passes keep {} live until the content in S3 changes)",
                r.from, r.to, r.to
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            fatal(&format!("{} ({})", chain(&e), e.code()));
            ExitCode::FAILURE
        }
    }
}

fn report_once(result: Result<Summary, SyncError>, json: bool) -> ExitCode {
    match result {
        Ok(summary) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).unwrap_or_default()
                );
            } else {
                println!(
                    "listed {} | downloaded {} ({} bytes) | unchanged {} | skipped {} | failed {} | {} ms",
                    summary.listed, summary.downloaded, summary.bytes, summary.unchanged,
                    summary.skipped, summary.failed, summary.duration_ms
                );
                for p in summary.planned.iter().flatten() {
                    println!(
                        "  would {} {}{}: {}",
                        p.action,
                        p.key,
                        p.path
                            .as_deref()
                            .map(|x| format!(" -> {x}"))
                            .unwrap_or_default(),
                        p.reason
                    );
                }
                if summary.deleted > 0 {
                    println!(
                        "  deleted {} file(s) whose objects are gone",
                        summary.deleted
                    );
                }
                for p in &summary.skipped_keys {
                    println!("  skipped {:?}: {}", p.key, p.message);
                }
                for p in &summary.failures {
                    println!("  failed {}: {}", p.key, p.message);
                }
            }
            if summary.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            fatal(&format!("{} ({})", chain(&e), e.code()));
            ExitCode::FAILURE
        }
    }
}

/// `--work-dir`, else the current folder.
fn working_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(d) => Ok(d),
        None => std::env::current_dir().context("cannot determine the working folder"),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    let cwd = std::env::current_dir().context("cannot determine the working folder")?;
    let parsed = Config::load_file(path, &cwd)?;
    for w in &parsed.warnings {
        tracing::warn!("{w}");
    }
    Ok(parsed.config)
}

async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
    }
    cancel.cancel();
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
