//! `gg-s3-sync check`: every step a sync depends on, one line each, with the fix for each
//! failure. A step whose prerequisite failed is skipped rather than reported twice.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::clock::SharedClock;
use crate::config::{Config, SourceMode};
use crate::credentials::{self, rfc3339, IotCredentialsProvider, ProviderSettings};
use crate::sync::s3::Source;
use crate::sync::{chain, SyncSettings};

/// Warn when the certificate expires sooner than this.
const CERT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock skew that fails the check (SigV4 rejects requests 15 minutes off; credentials expiry is
/// judged locally).
const SKEW_FAIL: Duration = Duration::from_secs(5 * 60);
/// Clock skew that earns a warning.
const SKEW_WARN: Duration = Duration::from_secs(30);
/// Warn when localDir has less free space than this.
const FREE_SPACE_WARNING: u64 = 100 * 1024 * 1024;

/// Outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Pass,
    /// Works, but deserves attention.
    Warn,
    /// Broken; `detail` says how to fix it.
    Fail,
    /// Not tried because an earlier step failed, or not needed in this mode.
    Skip,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found, and for failures the fix.
    pub detail: String,
}

/// All steps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Whether nothing failed.
    pub ok: bool,
    /// The steps, in order.
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: &'static str, status: Status, detail: impl Into<String>) -> bool {
        self.checks.push(Check {
            name,
            status,
            detail: detail.into(),
        });
        self.ok = !self.checks.iter().any(|c| c.status == Status::Fail);
        status != Status::Fail
    }

    fn skip(&mut self, names: &[&'static str], why: &str) {
        for n in names {
            self.add(n, Status::Skip, why);
        }
    }

    /// One line per step: `PASS name: detail`.
    #[must_use]
    pub fn human(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let tag = match c.status {
                Status::Pass => "PASS",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
                Status::Skip => "SKIP",
            };
            out.push_str(&format!("{tag} {}: {}\n", c.name, c.detail));
        }
        out.push_str(if self.ok {
            "all checks passed\n"
        } else {
            "some checks failed\n"
        });
        out
    }
}

const FILES: &str = "certificate, key and CA files";
const VALIDITY: &str = "certificate validity";
const NETWORK: &str = "network path";
const DNS: &str = "credentials endpoint DNS";
const TLS: &str = "TLS handshake with the credentials endpoint";
const EXCHANGE: &str = "role alias exchange";
const LIST: &str = "bucket reachable and s3:ListBucket";
const GET: &str = "s3:GetObject";
const LOCAL: &str = "localDir writable";
const RELEASES: &str = "releases folder";
const CLOCK: &str = "clock skew";

/// Starts a report with the configuration step.
#[must_use]
pub fn configuration(result: Result<(Config, Vec<String>), String>) -> (Report, Option<Config>) {
    let mut r = Report {
        ok: true,
        checks: Vec::new(),
    };
    match result {
        Ok((c, warnings)) if warnings.is_empty() => {
            r.add("configuration", Status::Pass, "valid");
            (r, Some(c))
        }
        Ok((c, warnings)) => {
            r.add("configuration", Status::Warn, warnings.join("; "));
            (r, Some(c))
        }
        Err(e) => {
            r.add("configuration", Status::Fail, e);
            r.skip(
                &[FILES, VALIDITY, DNS, TLS, EXCHANGE, LIST, GET, LOCAL, CLOCK],
                "the configuration is invalid",
            );
            (r, None)
        }
    }
}

/// Runs every step after the configuration.
pub async fn run(mut r: Report, config: &Config, clock: SharedClock) -> Report {
    let settings = ProviderSettings::from(config);
    let now = clock.now();
    let key_readable = std::fs::File::open(&settings.private_key_path).is_ok();
    match credentials::choose_source(
        settings.source,
        &settings.private_key_path,
        key_readable,
        settings.tes.is_some(),
    ) {
        Ok(credentials::Chosen::Tes) => return run_tes(r, config, settings, clock).await,
        Ok(credentials::Chosen::Iot) => {}
        Err(e) => {
            r.add(FILES, Status::Fail, e.to_string());
            r.skip(
                &[VALIDITY, DNS, TLS, EXCHANGE, LIST, GET],
                "no source of credentials",
            );
            local_dir(&mut r, &config.local_dir);
            releases(&mut r, config);
            clock_skew(&mut r, config, now).await;
            return r;
        }
    }
    let files_ok = match credentials::inspect_files(&settings) {
        Ok(info) => {
            r.add(
                FILES,
                Status::Pass,
                "readable; the key matches the certificate",
            );
            validity(&mut r, info, now);
            true
        }
        Err(e) => {
            r.add(FILES, Status::Fail, e.to_string());
            r.add(VALIDITY, Status::Skip, "the certificate could not be read");
            false
        }
    };
    let endpoint = settings.endpoint.clone();
    let env = |k: &str| std::env::var(k).ok();
    let cred_proxy = crate::proxy::for_request(env, "https", &endpoint.host);
    let (s3_scheme, s3_host) = s3_target(config);
    let s3_proxy = crate::proxy::for_request(env, &s3_scheme, &s3_host);
    let via = |p: &Option<String>| {
        p.as_ref()
            .map_or_else(|| "direct".to_owned(), |p| format!("via proxy {p}"))
    };
    // MQTT (outside Greengrass) tunnels through HTTPS_PROXY/ALL_PROXY; a proxy it cannot use
    // (SOCKS, a bad URL) fails this step with the reason.
    let (mqtt_path, mqtt_status) = match &config.mqtt {
        None => (String::new(), Status::Pass),
        Some(m) => match crate::proxy::tunnel_for(env, &m.endpoint.host) {
            Ok(t) => (
                format!("; MQTT {}: {}", m.endpoint, via(&t.map(|t| t.to_string()))),
                Status::Pass,
            ),
            Err(e) => (format!("; MQTT {}: {e}", m.endpoint), Status::Fail),
        },
    };
    r.add(
        NETWORK,
        mqtt_status,
        format!(
            "credentials endpoint {endpoint}: {}; S3 {s3_host}: {}{mqtt_path} (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY)",
            via(&cred_proxy),
            via(&s3_proxy)
        ),
    );
    let dns_ok = if let Some(p) = &cred_proxy {
        // Behind a proxy the device may not resolve public names at all: the proxy does.
        r.add(
            DNS,
            Status::Pass,
            format!("{endpoint} is resolved by the proxy {p}"),
        )
    } else {
        match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
        Ok(addrs) => {
            let list: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            r.add(DNS, Status::Pass, format!("{endpoint} resolves to {}", list.join(", ")))
        }
        Err(e) => r.add(
            DNS,
            Status::Fail,
            format!("{endpoint} does not resolve ({e}); check credentialsEndpoint (aws iot describe-endpoint --endpoint-type iot:CredentialProvider) and DNS"),
        ),
        }
    };
    let provider = IotCredentialsProvider::new(settings, clock.clone());
    let creds_ok = if files_ok && dns_ok {
        match provider.credentials().await {
            Ok(_) => {
                r.add(
                    TLS,
                    Status::Pass,
                    format!("{endpoint} trusted by rootCaPath and accepted the device certificate"),
                );
                let expiry = provider.expiration().await.map(rfc3339).unwrap_or_default();
                r.add(
                    EXCHANGE,
                    Status::Pass,
                    format!(
                        "role alias '{}' gave credentials until {expiry}",
                        config.role_alias
                    ),
                )
            }
            Err(e) if credentials::is_tls_problem(&e) => {
                r.add(TLS, Status::Fail, e.to_string());
                r.add(EXCHANGE, Status::Skip, "no TLS connection");
                false
            }
            Err(e) => {
                if !matches!(
                    *e,
                    credentials::Error::Connect { .. } | credentials::Error::Timeout { .. }
                ) {
                    r.add(
                        TLS,
                        Status::Pass,
                        format!("{endpoint} trusted by rootCaPath"),
                    );
                }
                r.add(EXCHANGE, Status::Fail, e.to_string())
            }
        }
    } else {
        r.skip(&[TLS, EXCHANGE], "the files or DNS failed");
        false
    };
    if creds_ok {
        s3_steps(&mut r, config, provider).await;
    } else {
        r.skip(&[LIST, GET], "no AWS credentials");
    }
    local_dir(&mut r, &config.local_dir);
    releases(&mut r, config);
    clock_skew(&mut r, config, now).await;
    r
}

fn validity(r: &mut Report, info: credentials::CertificateInfo, now: SystemTime) {
    let until = rfc3339(info.not_after);
    if now < info.not_before {
        r.add(
            VALIDITY,
            Status::Fail,
            format!(
                "the certificate is valid only from {}; this clock says {} (fix the clock)",
                rfc3339(info.not_before),
                rfc3339(now)
            ),
        );
    } else if now >= info.not_after {
        r.add(
            VALIDITY,
            Status::Fail,
            format!("the certificate expired at {until}; issue and register a new one"),
        );
    } else if info.not_after.duration_since(now).unwrap_or_default() < CERT_EXPIRY_WARNING {
        r.add(
            VALIDITY,
            Status::Warn,
            format!("the certificate expires at {until}, within 30 days; rotate it"),
        );
    } else {
        r.add(VALIDITY, Status::Pass, format!("valid until {until}"));
    }
}

/// The steps when the credentials come from the nucleus's token exchange service: the key is
/// the nucleus's to use (an HSM or TPM), so the file, DNS and TLS steps do not apply.
async fn run_tes(
    mut r: Report,
    config: &Config,
    settings: ProviderSettings,
    clock: SharedClock,
) -> Report {
    let now = clock.now();
    let uri = settings
        .tes
        .as_ref()
        .map(|t| t.uri.clone())
        .unwrap_or_default();
    let why = "credentials come from the nucleus's token exchange service";
    r.add(
        FILES,
        Status::Skip,
        format!(
            "the device key ({}) is the nucleus's to use; {why}",
            settings.private_key_path.display()
        ),
    );
    r.skip(&[VALIDITY, DNS, TLS], why);
    let provider = IotCredentialsProvider::new(settings, clock.clone());
    let ok = match provider.credentials().await {
        Ok(_) => {
            let expiry = provider.expiration().await.map(rfc3339).unwrap_or_default();
            r.add(
                EXCHANGE,
                Status::Pass,
                format!("the token exchange service at {uri} gave credentials until {expiry} (the nucleus's iotRoleAlias)"),
            )
        }
        Err(e) => r.add(EXCHANGE, Status::Fail, e.to_string()),
    };
    if ok {
        s3_steps(&mut r, config, provider).await;
    } else {
        r.skip(&[LIST, GET], "no AWS credentials");
    }
    local_dir(&mut r, &config.local_dir);
    releases(&mut r, config);
    clock_skew(&mut r, config, now).await;
    r
}

/// The scheme and host S3 requests go to: `s3EndpointUrl`, else AWS's regional endpoint.
fn s3_target(config: &Config) -> (String, String) {
    match &config.s3_endpoint_url {
        Some(url) => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
            let host = rest.split(['/', '?']).next().unwrap_or(rest);
            let host = match host.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                _ => host,
            };
            (scheme.to_owned(), host.to_owned())
        }
        None => (
            "https".to_owned(),
            format!("{}.s3.{}.amazonaws.com", config.bucket, config.region),
        ),
    }
}

async fn s3_steps(r: &mut Report, config: &Config, provider: IotCredentialsProvider) {
    let settings = SyncSettings::from(config);
    let source = Source::new(&settings.s3, provider);
    let probe_key = match &config.source {
        SourceMode::Prefix => match source.list_page(&config.prefix, None).await {
            Ok(page) => {
                r.add(
                    LIST,
                    Status::Pass,
                    format!(
                        "s3://{}/{} lists {} object(s) on its first page",
                        config.bucket,
                        config.prefix,
                        page.objects.len()
                    ),
                );
                // Probe an object the sync would actually write (not a marker or unsafe key).
                page.objects
                    .into_iter()
                    .find(|o| {
                        matches!(
                            crate::sync::plan::map_key(&o.key, &config.prefix, o.size),
                            crate::sync::plan::KeyVerdict::Path(_)
                        )
                    })
                    .map(|o| o.key)
            }
            Err(e) => {
                r.add(LIST, Status::Fail, chain(&e));
                r.add(GET, Status::Skip, "nothing listed to read");
                return;
            }
        },
        SourceMode::Keys(keys) => {
            r.add(
                LIST,
                Status::Skip,
                "not needed: keys are named, nothing is listed",
            );
            keys.first().cloned()
        }
        SourceMode::Manifest(key) => {
            r.add(
                LIST,
                Status::Skip,
                "not needed: the manifest names the keys",
            );
            Some(key.clone())
        }
    };
    match probe_key {
        None => {
            r.add(
                GET,
                Status::Warn,
                "no object under the prefix to try reading",
            );
        }
        Some(key) => match source.head(&key).await {
            Ok(o) => {
                r.add(
                    GET,
                    Status::Pass,
                    format!("read s3://{}/{} ({} bytes)", config.bucket, o.key, o.size),
                );
            }
            Err(e) => {
                r.add(GET, Status::Fail, chain(&e));
            }
        },
    }
}

/// With `releases` on: `localDir` can become a link, and the releases folder is on its file
/// system (hard links and the switch's rename need it).
fn releases(r: &mut Report, config: &Config) {
    let Some(rel) = &config.releases else { return };
    let existing = |p: &Path| {
        let mut p = p.to_path_buf();
        while !p.exists() && p.pop() {}
        p
    };
    let parent = config.local_dir.parent().unwrap_or(Path::new("/"));
    let dev = |p: &Path| {
        std::fs::metadata(existing(p))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
    };
    if dev(parent) != dev(&rel.dir) {
        r.add(
            RELEASES,
            Status::Fail,
            format!(
                "releases.dir {} is not on the file system of {}: a release cannot be switched in with one rename; choose a folder beside localDir",
                rel.dir.display(),
                parent.display()
            ),
        );
        return;
    }
    let what = match std::fs::symlink_metadata(&config.local_dir) {
        Err(_) => "localDir will be created as a link to the first release".to_owned(),
        Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&config.local_dir) {
            Ok(t) => format!("localDir links to {}", t.display()),
            Err(e) => format!("localDir is a link ({e})"),
        },
        Ok(m) if m.is_dir() => {
            "localDir is a folder: the first release adopts it (it is kept aside as adopted-<time>)"
                .to_owned()
        }
        Ok(_) => {
            r.add(
                RELEASES,
                Status::Fail,
                format!("localDir {} is a file; with releases on it must be missing, a folder or a link to a release: move it away", config.local_dir.display()),
            );
            return;
        }
    };
    r.add(
        RELEASES,
        Status::Pass,
        format!("{} (keep {}); {what}", rel.dir.display(), rel.keep),
    );
}

fn local_dir(r: &mut Report, dir: &Path) {
    // Test in the folder, or in the nearest existing parent if the folder will be created.
    let mut probe_dir = dir.to_path_buf();
    while !probe_dir.exists() {
        if !probe_dir.pop() {
            break;
        }
    }
    let probe = probe_dir.join(format!(".gg-s3-sync.check-{:08x}.part", fastrand::u32(..)));
    let written =
        std::fs::write(&probe, b"x").and_then(|()| std::fs::File::open(&probe)?.sync_all());
    let _ = std::fs::remove_file(&probe);
    if let Err(e) = written {
        r.add(
            LOCAL,
            Status::Fail,
            format!("cannot write in {} ({e}); give the component's user write access or choose another localDir", probe_dir.display()),
        );
        return;
    }
    match rustix::fs::statvfs(&probe_dir) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let status = if free < FREE_SPACE_WARNING {
                Status::Warn
            } else {
                Status::Pass
            };
            let created = if probe_dir.as_path() == dir {
                String::new()
            } else {
                format!(" ({} will be created)", dir.display())
            };
            r.add(
                LOCAL,
                status,
                format!(
                    "{} is writable{created}, {} MiB free",
                    probe_dir.display(),
                    free / (1024 * 1024)
                ),
            );
        }
        Err(e) => {
            r.add(
                LOCAL,
                Status::Warn,
                format!(
                    "{} is writable; free space unknown ({e})",
                    probe_dir.display()
                ),
            );
        }
    }
}

async fn clock_skew(r: &mut Report, config: &Config, now: SystemTime) {
    let url = config
        .s3_endpoint_url
        .clone()
        .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", config.region));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            r.add(CLOCK, Status::Warn, format!("cannot compare clocks ({e})"));
            return;
        }
    };
    let date = match client.head(&url).send().await {
        Ok(resp) => resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| {
                aws_smithy_types::DateTime::from_str(
                    d,
                    aws_smithy_types::date_time::Format::HttpDate,
                )
                .ok()
            })
            .and_then(|d| SystemTime::try_from(d).ok()),
        Err(e) => {
            r.add(
                CLOCK,
                Status::Warn,
                format!("cannot reach {url} to compare clocks ({})", chain(&e)),
            );
            return;
        }
    };
    let Some(server) = date else {
        r.add(
            CLOCK,
            Status::Warn,
            format!("{url} sent no Date header to compare with"),
        );
        return;
    };
    let (status, text) = judge_skew(now, server, &url);
    r.add(CLOCK, status, text);
}

/// Classifies the difference between this clock and a server's `Date` (pure).
fn judge_skew(now: SystemTime, server: SystemTime, url: &str) -> (Status, String) {
    let skew = now
        .duration_since(server)
        .or_else(|_| server.duration_since(now))
        .unwrap_or_default();
    let text = format!(
        "this clock is {} s {} {url}",
        skew.as_secs(),
        if now >= server { "ahead of" } else { "behind" }
    );
    if skew > SKEW_FAIL {
        (Status::Fail, format!("{text}; AWS rejects requests and credentials look expired: enable time synchronisation (NTP)"))
    } else if skew > SKEW_WARN {
        (
            Status::Warn,
            format!("{text}; enable time synchronisation (NTP)"),
        )
    } else {
        (Status::Pass, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_configuration_skips_the_rest() {
        let (r, c) = configuration(Err("bucket: required".into()));
        assert!(c.is_none() && !r.ok);
        assert_eq!(
            r.checks.iter().filter(|c| c.status == Status::Skip).count(),
            9
        );
        assert!(r
            .human()
            .starts_with("FAIL configuration: bucket: required\nSKIP "));
    }

    #[test]
    fn clock_skew_thresholds() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(judge_skew(t(1000), t(1010), "u").0, Status::Pass);
        let (s, text) = judge_skew(t(1000), t(1100), "u");
        assert_eq!(s, Status::Warn);
        assert!(text.contains("100 s behind u"), "{text}");
        let (s, text) = judge_skew(t(2000), t(1000), "u");
        assert_eq!(s, Status::Fail);
        assert!(text.contains("ahead of") && text.contains("NTP"), "{text}");
    }

    #[test]
    fn certificate_validity_windows() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let day = 86_400;
        let info = credentials::CertificateInfo {
            not_before: t(100 * day),
            not_after: t(200 * day),
        };
        let status = |now| {
            let mut r = Report::default();
            validity(&mut r, info, now);
            r.checks[0].status
        };
        assert_eq!(status(t(50 * day)), Status::Fail);
        assert_eq!(status(t(150 * day)), Status::Pass);
        assert_eq!(status(t(190 * day)), Status::Warn);
        assert_eq!(status(t(200 * day)), Status::Fail);
    }
}
