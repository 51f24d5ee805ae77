//! The credentials provider client against the devstack's mTLS endpoint, with an injected clock.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use devstack::{account, pki, Device, Options, Policy, Role, RoleAlias};
use gg_s3_sync::clock::{ManualClock, SharedClock};
use gg_s3_sync::credentials::{Error, IotCredentialsProvider, ProviderSettings, CLIENT_ERROR_TTL};
use gg_s3_sync::endpoint::Endpoint;

use common::Env;

fn settings(env: &Env) -> ProviderSettings {
    ProviderSettings {
        source: gg_s3_sync::config::CredentialsSource::Iot,
        tes: None,
        endpoint: Endpoint::parse(&env.stack.credentials_endpoint()).unwrap(),
        role_alias: env.stack.options.role_alias.clone(),
        thing_name: Some(env.stack.options.thing_name.clone()),
        certificate_file_path: env.stack.device.cert_path.clone(),
        private_key_path: env.stack.device.key_path.clone(),
        root_ca_path: env.stack.ca.files.cert_path.clone(),
        region: "us-east-1".into(),
        refresh_ahead: Duration::from_secs(300),
    }
}

fn provider(s: ProviderSettings) -> (IotCredentialsProvider, ManualClock) {
    let clock = ManualClock::new(account::now());
    let shared: SharedClock = Arc::new(clock.clone());
    (IotCredentialsProvider::new(s, shared), clock)
}

async fn fail(s: ProviderSettings) -> (Arc<Error>, u64) {
    let (p, _) = provider(s);
    let e = p.credentials().await.expect_err("should fail");
    (e, p.requests_sent())
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A device certificate whose key is stored in `format`, made with openssl.
fn device_with_key_format(env: &Env, algo: &str, format: &str) -> (PathBuf, PathBuf) {
    let dir = env.tmp.path().join(format!("keys-{algo}-{format}"));
    std::fs::create_dir_all(&dir).unwrap();
    let p8 = dir.join("pkcs8.pem");
    let p = |x: &Path| x.to_str().unwrap().to_owned();
    match algo {
        "rsa" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &p(&p8),
        ]),
        _ => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &p(&p8),
        ]),
    }
    let key = dir.join("device.key");
    match (algo, format) {
        (_, "pkcs8") => {
            std::fs::copy(&p8, &key).unwrap();
        }
        ("rsa", "pkcs1") => openssl(&["rsa", "-in", &p(&p8), "-traditional", "-out", &p(&key)]),
        ("ec", "sec1") => openssl(&["ec", "-in", &p(&p8), "-out", &p(&key)]),
        other => panic!("{other:?}"),
    }
    let first_line = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let expected = match format {
        "pkcs1" => "-----BEGIN RSA PRIVATE KEY-----",
        "sec1" => "-----BEGIN EC PRIVATE KEY-----",
        _ => "-----BEGIN PRIVATE KEY-----",
    };
    assert_eq!(first_line, expected);
    let pem = std::fs::read_to_string(&p8).unwrap();
    let files = env
        .stack
        .ca
        .device_for_key(&dir, "device", &env.stack.options.thing_name, &pem)
        .unwrap();
    env.stack.account.register_device(
        &files.cert_der,
        Device {
            thing: Some(env.stack.options.thing_name.clone()),
            allowed_aliases: vec!["*".into()],
            active: true,
        },
    );
    (files.cert_path, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn rsa_and_ec_keys_in_pkcs1_pkcs8_and_sec1() {
    let env = Env::default().await;
    for (algo, format) in [
        ("rsa", "pkcs1"),
        ("rsa", "pkcs8"),
        ("ec", "sec1"),
        ("ec", "pkcs8"),
    ] {
        let (cert, key) = device_with_key_format(&env, algo, format);
        let mut s = settings(&env);
        s.certificate_file_path = cert;
        s.private_key_path = key;
        let (p, _) = provider(s);
        let c = p
            .credentials()
            .await
            .unwrap_or_else(|e| panic!("{algo} {format}: {e}"));
        assert!(c.access_key_id().starts_with("ASIA"));
        assert!(c.session_token().is_some());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn root_ca_file_with_several_certificates() {
    let env = Env::default().await;
    let other = pki::Ca::new(env.tmp.path(), "Another root", "other-ca").unwrap();
    let bundle = env.tmp.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        format!("{}{}", other.files.cert_pem, env.stack.ca.files.cert_pem),
    )
    .unwrap();
    let mut s = settings(&env);
    s.root_ca_path = bundle;
    let (p, _) = provider(s);
    p.credentials()
        .await
        .expect("the second CA in the file signs the server");
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_server_is_named_and_not_retried() {
    let env = Env::default().await;
    let other = pki::Ca::new(env.tmp.path(), "Another root", "other-ca").unwrap();
    let mut s = settings(&env);
    s.root_ca_path = other.files.cert_path.clone();
    let (e, requests) = fail(s).await;
    assert!(matches!(*e, Error::ServerNotTrusted { .. }), "{e:?}");
    assert!(e.to_string().contains("rootCaPath"), "{e}");
    assert_eq!(requests, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn device_certificate_from_unknown_ca_is_rejected_in_the_handshake() {
    let env = Env::default().await;
    let rogue = pki::Ca::new(env.tmp.path(), "Rogue CA", "rogue-ca").unwrap();
    let dev = rogue
        .device(env.tmp.path(), "rogue-device", "devstack-thing")
        .unwrap();
    let mut s = settings(&env);
    s.certificate_file_path = dev.cert_path;
    s.private_key_path = dev.key_path;
    let (e, _) = fail(s).await;
    assert!(matches!(*e, Error::CertificateRejected { .. }), "{e:?}");
    assert!(e.to_string().contains("registered and ACTIVE"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_file_problems_are_named_before_any_request() {
    let env = Env::default().await;
    let other = env
        .stack
        .add_device(
            "other",
            Device {
                thing: None,
                allowed_aliases: vec![],
                active: true,
            },
        )
        .unwrap();
    let mut s = settings(&env);
    s.private_key_path = other.key_path.clone();
    let (e, requests) = fail(s).await;
    assert!(matches!(*e, Error::KeyMismatch { .. }), "{e:?}");
    assert_eq!(requests, 0);

    let mut s = settings(&env);
    s.private_key_path = env.tmp.path().join("missing.key");
    let (e, _) = fail(s).await;
    let text = e.to_string();
    assert!(
        text.contains("privateKeyPath") && text.contains("no such file"),
        "{text}"
    );

    let mut s = settings(&env);
    s.private_key_path = env.stack.device.cert_path.clone();
    let (e, _) = fail(s).await;
    assert!(e.to_string().contains("no PEM private key"), "{e}");

    let mut s = settings(&env);
    s.root_ca_path = env.stack.device.key_path.clone();
    let (e, _) = fail(s).await;
    assert!(
        e.to_string().contains("rootCaPath") && e.to_string().contains("no PEM CERTIFICATE"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_errors_map_to_their_fixes() {
    let env = Env::default().await;
    let acct = &env.stack.account;
    acct.put_alias(
        "NoTrust",
        RoleAlias {
            duration: Duration::from_secs(900),
            role: Some(Role {
                trusts_credentials_provider: false,
                ..Role::new(Policy::allow_all())
            }),
        },
    );
    acct.put_alias(
        "TooLong",
        RoleAlias {
            duration: Duration::from_secs(7200),
            role: Some(Role {
                max_session: Duration::from_secs(3600),
                ..Role::new(Policy::allow_all())
            }),
        },
    );
    acct.put_alias(
        "NotMine",
        RoleAlias {
            duration: Duration::from_secs(900),
            role: Some(Role::new(Policy::allow_all())),
        },
    );
    let everything = env
        .stack
        .add_device(
            "all-aliases",
            Device {
                thing: Some("all".into()),
                allowed_aliases: vec!["*".into()],
                active: true,
            },
        )
        .unwrap();

    let with = |alias: &str, thing: &str, dev: Option<&pki::CertFiles>| {
        let mut s = settings(&env);
        s.role_alias = alias.into();
        s.thing_name = Some(thing.into());
        if let Some(d) = dev {
            s.certificate_file_path = d.cert_path.clone();
            s.private_key_path = d.key_path.clone();
        }
        s
    };
    let thing = env.stack.options.thing_name.clone();
    let alias = env.stack.options.role_alias.clone();

    let (e, n) = fail(with("NoSuchAlias", &thing, None)).await;
    assert!(matches!(*e, Error::RoleAliasNotFound { .. }), "{e:?}");
    assert_eq!(n, 1, "4xx is not retried");

    let (e, _) = fail(with(&alias, "someone-else", None)).await;
    assert!(matches!(*e, Error::InvalidThingName { .. }), "{e:?}");

    let (e, _) = fail(with("NotMine", &thing, None)).await;
    assert!(matches!(*e, Error::AccessDenied { .. }), "{e:?}");
    assert!(
        e.to_string().contains(
            "iot:AssumeRoleWithCertificate on arn:aws:iot:us-east-1:<account-id>:rolealias/NotMine"
        ),
        "{e}"
    );

    let (e, _) = fail(with("NoTrust", "all", Some(&everything))).await;
    assert!(matches!(*e, Error::CannotAssumeRole { .. }), "{e:?}");
    assert!(
        e.to_string().contains("credentials.iot.amazonaws.com"),
        "{e}"
    );

    let (e, _) = fail(with("TooLong", "all", Some(&everything))).await;
    assert!(matches!(*e, Error::DurationTooLong { .. }), "{e:?}");

    // Signed by the right CA but never registered in the account.
    let unregistered = env
        .stack
        .ca
        .device(env.tmp.path(), "unregistered", "ghost")
        .unwrap();
    let (e, _) = fail(with(&alias, "ghost", Some(&unregistered))).await;
    assert!(matches!(*e, Error::CertificateNotValid { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_errors_are_negatively_cached() {
    let env = Env::default().await;
    let mut s = settings(&env);
    s.role_alias = "Missing".into();
    let (p, clock) = provider(s);
    let e1 = p.credentials().await.unwrap_err();
    let e2 = p.credentials().await.unwrap_err();
    assert!(Arc::ptr_eq(&e1, &e2), "the cached failure is returned");
    assert_eq!(
        p.requests_sent(),
        1,
        "no request while the failure is cached"
    );
    clock.advance(CLIENT_ERROR_TTL + Duration::from_secs(1));
    let _ = p.credentials().await.unwrap_err();
    assert_eq!(p.requests_sent(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_throttling_are_retried_with_backoff() {
    let env = Env::default().await;
    env.stack
        .account
        .force_credential_responses(503, "Service Unavailable", 2);
    let (p, _) = provider(settings(&env));
    p.credentials().await.expect("third attempt succeeds");
    assert_eq!(p.requests_sent(), 3);

    env.stack
        .account
        .force_credential_responses(429, "Rate exceeded", 3);
    let (p, _) = provider(settings(&env));
    let e = p.credentials().await.unwrap_err();
    assert!(matches!(*e, Error::Throttled { .. }), "{e:?}");
    assert_eq!(p.requests_sent(), 3, "gives up after three attempts");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_callers_share_one_request() {
    let env = Env::default().await;
    let (p, _) = provider(settings(&env));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let p = p.clone();
        tasks.spawn(async move {
            p.provide_credentials()
                .await
                .map(|c| c.access_key_id().to_owned())
        });
    }
    let mut keys = std::collections::BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        keys.insert(r.unwrap().unwrap());
    }
    assert_eq!(keys.len(), 1);
    assert_eq!(p.requests_sent(), 1);
    assert_eq!(env.stack.account.stats().credentials_issued, 1);
}

/// Waits for a background refresh to replace the credentials with key `old`.
async fn refreshed(p: &IotCredentialsProvider, old: &str) -> aws_credential_types::Credentials {
    for _ in 0..500 {
        let c = p.credentials().await.unwrap();
        if c.access_key_id() != old {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the background refresh never replaced the credentials");
}

/// While the cached credentials are valid, a refresh (here a slow endpoint: 3 s) blocks no
/// caller; the new credentials replace the old when they arrive. Only a caller with nothing
/// usable waits.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_does_not_block_callers_while_credentials_are_valid() {
    let env = Env::default().await;
    let (p, clock) = provider(settings(&env));
    let first = p.credentials().await.unwrap();
    clock.advance(Duration::from_secs(3600 - 200));
    env.stack
        .account
        .set_credential_delay(Duration::from_secs(3));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let p = p.clone();
        callers.spawn(async move {
            tokio::time::timeout(Duration::from_millis(500), p.credentials())
                .await
                .expect("served without waiting for the refresh")
                .unwrap()
                .access_key_id()
                .to_owned()
        });
    }
    while let Some(key) = callers.join_next().await {
        assert_eq!(key.unwrap(), first.access_key_id());
    }
    let second = refreshed(&p, first.access_key_id()).await;
    assert_ne!(second.access_key_id(), first.access_key_id());
    assert_eq!(
        p.requests_sent(),
        2,
        "one background refresh for all callers"
    );
    // Near real expiry with nothing newer, a caller does wait for the endpoint.
    p.invalidate().await;
    env.stack
        .account
        .set_credential_delay(Duration::from_millis(300));
    let waited = tokio::time::timeout(Duration::from_secs(10), p.credentials()).await;
    assert!(waited.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshes_ahead_of_expiry_and_keeps_valid_credentials_if_refresh_fails() {
    let env = Env::default().await; // 3600 s credentials
    let (p, clock) = provider(settings(&env));
    let first = p.credentials().await.unwrap();
    clock.advance(Duration::from_secs(3600 - 300 - 5));
    assert_eq!(
        p.credentials().await.unwrap().access_key_id(),
        first.access_key_id()
    );
    assert_eq!(p.requests_sent(), 1, "still outside the refresh window");
    clock.advance(Duration::from_secs(10));
    // In the refresh window: the caller is served the still-valid credentials at once, and
    // the refresh runs in the background.
    assert_eq!(
        p.credentials().await.unwrap().access_key_id(),
        first.access_key_id()
    );
    let second = refreshed(&p, first.access_key_id()).await;
    assert_eq!(p.requests_sent(), 2, "refreshed 5 min before expiry");

    // In the next refresh window the endpoint fails; the still-valid credentials are served.
    // (The devstack stamps expiry with real time, so position the clock relative to it.)
    let expires = p.expiration().await.unwrap();
    let to_window = expires
        .duration_since(gg_s3_sync::clock::Clock::now(&clock))
        .unwrap();
    clock.advance(to_window - Duration::from_secs(100));
    env.stack
        .account
        .force_credential_responses(500, "Internal", 3);
    let third = p.credentials().await.expect("still valid for ~5 minutes");
    assert_eq!(third.access_key_id(), second.access_key_id());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_hours_ahead_still_gets_and_keeps_credentials() {
    // A board without a real-time clock, three hours ahead, and 1-hour credentials: judged on
    // the credentials provider's clock (its Date), they are valid for an hour from now.
    let env = Env::default().await;
    let (p, clock) = provider(settings(&env));
    clock.advance(Duration::from_secs(3 * 3600));
    let first = p.credentials().await.expect("not 'expired on arrival'");
    let skew = p
        .clock_skew_seconds()
        .expect("measured from the answer's Date");
    assert!((3 * 3600 - 5..=3 * 3600 + 5).contains(&skew), "{skew}");
    let expires = p.expiration().await.unwrap();
    let left = expires
        .duration_since(gg_s3_sync::clock::Clock::now(&clock))
        .unwrap();
    assert!(
        left > Duration::from_secs(3500),
        "a full hour on the local clock: {left:?}"
    );
    // Cached, and refreshed at the usual point of their (local) lifetime.
    clock.advance(Duration::from_secs(30 * 60));
    assert_eq!(
        p.credentials().await.unwrap().access_key_id(),
        first.access_key_id()
    );
    assert_eq!(p.requests_sent(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clock_years_behind_does_not_keep_credentials_past_their_life() {
    let env = Env::default().await;
    let clock = ManualClock::new(account::now() - Duration::from_secs(3 * 365 * 24 * 3600));
    let p = IotCredentialsProvider::new(settings(&env), Arc::new(clock.clone()));
    p.credentials().await.unwrap();
    assert!(p.clock_skew_seconds().unwrap() < -(365 * 24 * 3600));
    let left = p
        .expiration()
        .await
        .unwrap()
        .duration_since(gg_s3_sync::clock::Clock::now(&clock))
        .unwrap();
    assert!(
        left <= Duration::from_secs(3600),
        "not three years: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_sni_for_the_endpoint_host() {
    // The fake, like AWS, refuses connections whose SNI does not name the endpoint; every other
    // test connects to "localhost" and succeeds. An IP address carries no SNI and is refused.
    let env = Env::default().await;
    let mut s = settings(&env);
    s.endpoint = Endpoint {
        host: "127.0.0.1".into(),
        port: env.stack.credentials.addr().port(),
    };
    let (e, _) = fail(s).await;
    assert!(
        e.is_retryable(),
        "a dropped connection looks like a network failure: {e:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_endpoint_is_retried_then_reported() {
    let env = Env::default().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed now
    let mut s = settings(&env);
    s.endpoint = Endpoint {
        host: "127.0.0.1".into(),
        port,
    };
    let (e, requests) = fail(s).await;
    assert!(matches!(*e, Error::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("credentialsEndpoint"), "{e}");
    assert_eq!(requests, 3);
    let _ = Options::default();
}

/// A device clock years behind sees the endpoint's certificate as "not yet valid". That is the
/// clock, not rootCaPath: the error says so with the dates, and the endpoint is asked again
/// soon (NTP usually fixes the clock within minutes).
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_not_yet_valid_names_the_clock_and_is_retried_soon() {
    let env = Env::start(Options {
        server_validity: Some(((2040, 1, 1), (2041, 1, 1))),
        ..Options::default()
    })
    .await;
    let (p, clock) = provider(settings(&env));
    let e = p.credentials().await.unwrap_err();
    assert!(matches!(*e, Error::ClockOutsideCertificate { .. }), "{e:?}");
    assert_eq!(e.code(), "ClockWrong");
    let text = e.to_string();
    assert!(
        text.contains("not valid before 2040-01-01")
            && text.contains("clock is wrong, not rootCaPath"),
        "{text}"
    );
    let sent = p.requests_sent();
    clock.advance(gg_s3_sync::credentials::CLOCK_ERROR_TTL + Duration::from_secs(1));
    let _ = p.credentials().await;
    assert!(
        p.requests_sent() > sent,
        "asked again after {:?}",
        gg_s3_sync::credentials::CLOCK_ERROR_TTL
    );
}

async fn start_tes(env: &Env, bind_port: u16, token: &str) -> devstack::tes::TokenExchangeService {
    env.stack
        .start_tes(devstack::tes::Flavor::Classic, bind_port, token)
        .await
        .unwrap()
}

fn tes_settings(env: &Env, uri: &str, token: &str) -> ProviderSettings {
    ProviderSettings {
        source: gg_s3_sync::config::CredentialsSource::Auto,
        // A key in an HSM: only the nucleus can use it.
        private_key_path: PathBuf::from("pkcs11:token=greengrass;object=device;type=private"),
        tes: gg_s3_sync::credentials::TesEndpoint::from_vars(|k| match k {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI" => Some(uri.to_owned()),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN" => Some(token.to_owned()),
            _ => None,
        }),
        ..settings(env)
    }
}

/// A key in an HSM: `auto` takes the nucleus's token exchange service, and the credentials it
/// gives work on S3. A refused token is named and not retried.
#[tokio::test(flavor = "multi_thread")]
async fn an_hsm_key_gets_credentials_from_the_token_exchange_service() {
    let env = Env::default().await;
    let tes = start_tes(&env, 0, "component-token-1").await;
    let (p, _clock) = provider(tes_settings(&env, &tes.uri(), tes.token()));
    let c = p.credentials().await.unwrap();
    assert_eq!(
        p.source_in_use(),
        Some(gg_s3_sync::credentials::Chosen::Tes)
    );
    let session = env
        .stack
        .account
        .sessions()
        .into_iter()
        .find(|s| c.session_token() == Some(s.token.as_str()))
        .expect("issued by the account for the nucleus's alias");
    assert_eq!(session.alias, env.stack.options.role_alias);

    let (p, _clock) = provider(tes_settings(&env, &tes.uri(), "wrong-token"));
    let e = p.credentials().await.unwrap_err();
    assert!(matches!(*e, Error::TesRefused { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("aws.greengrass.TokenExchangeService"),
        "{e}"
    );
    assert_eq!(p.requests_sent(), 1, "a refused token is not retried");
}

/// At boot the component can start before the nucleus's TES listens: retried soon, then fine.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_exchange_service_not_up_yet_is_retried() {
    let env = Env::default().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("http://localhost:{port}{}", devstack::tes::PATH);
    let (p, clock) = provider(tes_settings(&env, &uri, "tok-boot"));
    let e = p.credentials().await.unwrap_err();
    assert!(matches!(*e, Error::TesUnavailable { .. }), "{e:?}");
    let _tes = start_tes(&env, port, "tok-boot").await;
    clock.advance(gg_s3_sync::credentials::CLOCK_ERROR_TTL + Duration::from_secs(1));
    p.credentials().await.expect("the TES is up now");
}

/// Nucleus lite's TES answers in its own way (`tes-serverd`): a stale SVCUID is a 404 with a
/// text, and when its tesd cannot get credentials it answers 200 with `null`. Each is named
/// for what it is, not as a malformed answer.
#[tokio::test(flavor = "multi_thread")]
async fn nucleus_lite_token_exchange_answers_are_named() {
    use devstack::tes::{Flavor, Nucleus, TokenExchangeService};
    let env = Env::default().await;
    let start = |alias: &str| {
        TokenExchangeService::start_as(
            Flavor::Lite,
            env.stack.account.clone(),
            std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            Nucleus {
                role_alias: alias.to_owned(),
                ..env.stack.tes_nucleus()
            },
            "ABCDEFGHIJKLMNOP",
        )
    };
    let tes = start(&env.stack.options.role_alias).await.unwrap();
    let (p, _clock) = provider(tes_settings(&env, &tes.uri(), "ABCDEFGHIJKLMNOP"));
    p.credentials().await.expect("lite's TES with this SVCUID");

    // After ggipcd restarts, the SVCUID the component holds is unknown.
    let (p, _clock) = provider(tes_settings(&env, &tes.uri(), "PONMLKJIHGFEDCBA"));
    let e = p.credentials().await.unwrap_err();
    assert!(matches!(*e, Error::TesRefused { .. }), "{e:?}");
    assert!(e.to_string().contains("404 No such svcuid present."), "{e}");

    // The nucleus's role alias does not exist: lite says 200 `null`.
    let broken = start("no-such-alias").await.unwrap();
    let (p, _clock) = provider(tes_settings(&env, &broken.uri(), "ABCDEFGHIJKLMNOP"));
    let e = p.credentials().await.unwrap_err();
    assert_eq!(e.code(), "TokenExchangeFailed", "{e:?}");
    assert!(e.to_string().contains("tesd could not get them"), "{e}");
}

/// TES credentials follow the same cache policy as the component's own exchange: concurrent
/// callers share one request, the credentials are refreshed ahead of expiry, and a refusal is
/// cached (not asked again on every call).
#[tokio::test(flavor = "multi_thread")]
async fn token_exchange_credentials_share_the_cache_policy() {
    let env = Env::default().await;
    let tes = start_tes(&env, 0, "tok-cache").await;
    let (p, clock) = provider(tes_settings(&env, &tes.uri(), tes.token()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let p = p.clone();
        tasks.spawn(async move { p.credentials().await.map(|c| c.access_key_id().to_owned()) });
    }
    let mut keys = std::collections::BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        keys.insert(r.unwrap().unwrap());
    }
    assert_eq!(keys.len(), 1, "one set of credentials for every caller");
    assert_eq!(p.requests_sent(), 1, "single flight");
    let old = keys.into_iter().next().unwrap();
    // Inside the refresh-ahead window (300 s before the hour's end): replaced in the background.
    clock.advance(Duration::from_secs(3600 - 200));
    let new = refreshed(&p, &old).await;
    assert_ne!(new.access_key_id(), old);
    assert_eq!(p.requests_sent(), 2);

    let (p, _clock) = provider(tes_settings(&env, &tes.uri(), "not-the-token"));
    for _ in 0..5 {
        assert!(p.credentials().await.is_err());
    }
    assert_eq!(p.requests_sent(), 1, "a refusal is cached");
}
