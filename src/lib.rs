//! gg-s3-sync: an AWS IoT Greengrass v2 component that keeps a local folder in sync with an S3
//! prefix, using the device's X.509 certificate as its only secret.
//!
//! # Layout
//! - [`config`]: the configuration contract (camelCase keys, lenient number/boolean forms,
//!   every error names its key).
//! - [`credentials`]: certificate → temporary AWS credentials at the AWS IoT credentials
//!   provider (mutual TLS), with its own cache, single flight, refresh ahead, negative cache.
//! - [`sync`]: the engine; `sync::plan` decides (pure), `sync::s3` and `sync::local` do I/O
//!   (`sync::group` commits small files a batch at a time),
//!   `sync::state` remembers what was written, `sync::release` keeps atomic releases (opt-in;
//!   `release::decide` is pure) and `sync::staged` builds one in a pass.
//! - [`ipc`]: Greengrass IPC client (frame/codec/rpc/model/client).
//! - [`discovery`]: Greengrass mode fills configuration gaps from the nucleus (pure).
//! - [`status`]: the status document (pure).
//! - [`mqtt`]: status over MQTT for devices without Greengrass.
//! - [`progress`]: the terminal progress bar of `once`.
//! - [`proxy`]: which proxy a request goes through, credentials redacted (pure).
//! - [`check`]: the preflight doctor (`gg-s3-sync check`).
//! - [`app`]: the supervisors (file mode, Greengrass mode) that run passes until cancelled;
//!   `app::trigger` reads trigger messages (pure).
//! - [`lock`]: one writer per `localDir` and state file (flock; the holder's PID).
//! - [`endpoint`], [`glob`], [`topic`]: `host:port` endpoints, key globs and MQTT topic
//!   filters (pure parsers and matchers).
//! - [`clock`], [`backoff`], [`errtext`]: injected time, retry policy, error text.

pub mod app;
pub mod backoff;
pub mod check;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod discovery;
pub mod endpoint;
pub mod errtext;
pub mod glob;
pub mod ipc;
pub mod lock;
pub mod mqtt;
pub mod progress;
pub mod proxy;
pub mod status;
pub mod sync;
pub mod topic;
