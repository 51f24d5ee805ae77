//! `gg-s3-sync check`: the preflight doctor against the devstack and the fake nucleus.

mod common;

use std::process::Command;

use common::{bin, Env};
use devstack::{Device, Options, Policy};
use serde_json::{json, Value};

fn check(
    env: &Env,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> (Option<i32>, Value) {
    let cfg = env.write_config(&env.config("c/", edit));
    let out = Command::new(bin())
        .args(["check", "--json", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn status<'a>(report: &'a Value, name: &str) -> (&'a str, &'a str) {
    let c = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {report}"));
    (c["status"].as_str().unwrap(), c["detail"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn everything_passes_on_a_good_setup_and_the_human_form_has_a_line_per_step() {
    let env = Env::default().await;
    env.put("c/a.txt", "a").await;
    let (code, r) = tokio::task::block_in_place(|| check(&env, |_| {}));
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["ok"], true);
    let checks = r["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 11);
    assert!(checks.iter().all(|c| c["status"] == "pass"), "{r}");

    let cfg = env.write_config(&env.config("c/", |_| {}));
    let out = Command::new(bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("PASS ")).count(),
        11,
        "{text}"
    );
    assert!(text.ends_with("all checks passed\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_failure_names_its_fix() {
    let env = Env::default().await;
    env.put("c/a.txt", "a").await;

    let (code, r) = tokio::task::block_in_place(|| {
        check(&env, |m| {
            m.insert("roleAlias".into(), json!("Typo"));
        })
    });
    assert_eq!(code, Some(1));
    let (s, d) = status(&r, "role alias exchange");
    assert_eq!(s, "fail");
    assert!(d.contains("aws iot create-role-alias"), "{d}");
    assert_eq!(status(&r, "s3:GetObject").0, "skip");

    let expired = env
        .stack
        .ca
        .device_valid_between(
            env.tmp.path(),
            "expired",
            "devstack-thing",
            (2019, 1, 1),
            (2020, 1, 1),
        )
        .unwrap();
    env.stack.account.register_device(
        &expired.cert_der,
        Device {
            thing: Some("devstack-thing".into()),
            allowed_aliases: vec!["*".into()],
            active: true,
        },
    );
    let (_, r) = tokio::task::block_in_place(|| {
        check(&env, |m| {
            m.insert("certificateFilePath".into(), json!(expired.cert_path));
            m.insert("privateKeyPath".into(), json!(expired.key_path));
        })
    });
    let (s, d) = status(&r, "certificate validity");
    assert_eq!(s, "fail");
    assert!(d.contains("expired at 2020-01-01T00:00:00Z"), "{d}");

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
    let (_, r) = tokio::task::block_in_place(|| {
        check(&env, |m| {
            m.insert("privateKeyPath".into(), json!(other.key_path));
        })
    });
    assert!(
        status(&r, "certificate, key and CA files")
            .1
            .contains("does not match the certificate"),
        "{r}"
    );

    let file = env.tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (_, r) = tokio::task::block_in_place(|| {
        check(&env, |m| {
            m.insert("localDir".into(), json!(file.join("sub")));
        })
    });
    let (s, d) = status(&r, "localDir writable");
    assert_eq!(s, "fail");
    assert!(d.contains("choose another localDir"), "{d}");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_object_only_roles_fail_listing_but_pass_in_keys_mode() {
    let o = Options::default();
    let env = Env::start(Options {
        policy: Policy::get_only(&o.bucket),
        ..o
    })
    .await;
    env.put("c/a.txt", "a").await;
    let (_, r) = tokio::task::block_in_place(|| check(&env, |_| {}));
    let (s, d) = status(&r, "bucket reachable and s3:ListBucket");
    assert_eq!(s, "fail");
    assert!(
        d.contains("s3:ListBucket") && d.contains("keys or manifestKey"),
        "{d}"
    );

    let (code, r) = tokio::task::block_in_place(|| {
        check(&env, |m| {
            m.insert("keys".into(), json!(["c/a.txt"]));
        })
    });
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(status(&r, "bucket reachable and s3:ListBucket").0, "skip");
    assert_eq!(status(&r, "s3:GetObject").0, "pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn works_in_greengrass_mode() {
    let env = Env::default().await;
    let dir = env.tmp.path().join("gg");
    std::fs::create_dir_all(&dir).unwrap();
    let nucleus = devstack::nucleus::FakeNucleus::start(&dir).await.unwrap();
    nucleus.set_nucleus_config(
        json!({"iotCredEndpoint": env.stack.credentials_endpoint(), "awsRegion": "us-east-1"}),
    );
    let token = nucleus.register_component("com.example.S3Sync", json!({
        "bucket": env.bucket(), "localDir": env.local, "roleAlias": env.stack.options.role_alias,
        "s3EndpointUrl": env.stack.s3.url(), "s3ForcePathStyle": "true",
        "certificateFilePath": env.stack.device.cert_path, "privateKeyPath": env.stack.device.key_path,
        "accessControl": devstack::nucleus::recipe_access_control("com.example.S3Sync"),
    }));
    let out = tokio::task::block_in_place(|| {
        Command::new(bin())
            .args(["check", "--json"])
            .current_dir(&dir)
            .env("SVCUID", token)
            .env(
                "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT",
                "ipc.socket",
            )
            .env("AWS_IOT_THING_NAME", &env.stack.options.thing_name)
            .env("GG_ROOT_CA_PATH", &env.stack.ca.files.cert_path)
            .output()
            .unwrap()
    });
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(status(&r, "configuration").0, "pass");
    assert_eq!(status(&r, "role alias exchange").0, "pass");
}

/// A device key in an HSM (a PKCS#11 URI) with the nucleus's token exchange service offered:
/// check skips the file and TLS steps, tests the exchange through the TES, and a pass syncs
/// with those credentials (the log says which source).
#[tokio::test(flavor = "multi_thread")]
async fn an_hsm_key_checks_and_syncs_through_the_token_exchange_service() {
    let env = Env::default().await;
    env.put("h/a.txt", "via tes").await;
    let tes = env
        .stack
        .start_tes(devstack::tes::Flavor::Classic, 0, "component-svcuid")
        .await
        .unwrap();
    let cfg = env.write_config(&env.config("h/", |m| {
        m.insert(
            "privateKeyPath".into(),
            "pkcs11:token=greengrass;object=device;type=private".into(),
        );
    }));
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .arg(&cfg)
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", tes.uri())
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", tes.token())
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    };
    let out = tokio::task::block_in_place(|| run(&["check", "--json", "--config"]));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(status(&r, "certificate, key and CA files").0, "skip");
    let (s, detail) = status(&r, "role alias exchange");
    assert_eq!(s, "pass");
    assert!(detail.contains("token exchange service"), "{detail}");
    let out = tokio::task::block_in_place(|| run(&["once", "--json", "--config"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("source=\"tes\"") || stderr.contains("source=tes"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("component-svcuid"),
        "the TES token is never printed"
    );
    assert_eq!(std::fs::read(env.local.join("a.txt")).unwrap(), b"via tes");
}

/// With releases on, `check` says what localDir will become, and fails a releases folder on
/// another file system or a file at localDir, with the fix.
#[tokio::test(flavor = "multi_thread")]
async fn releases_are_checked() {
    let env = Env::default().await;
    env.put("c/a.txt", "a").await;
    let (code, r) = tokio::task::block_in_place(|| {
        check(&env, |m| {
            m.insert("releases".into(), json!({"keep": 2}));
        })
    });
    assert_eq!(code, Some(0), "{r}");
    let (s, detail) = status(&r, "releases folder");
    assert_eq!(s, "pass");
    assert!(detail.contains("created as a link"), "{detail}");

    // /dev/shm is another file system than the test's temporary folder (unless it is tmpfs
    // too: then the case proves nothing and is skipped).
    let same = |a: &std::path::Path, b: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(a).unwrap().dev() == std::fs::metadata(b).unwrap().dev()
    };
    if std::path::Path::new("/dev/shm").is_dir()
        && !same(env.tmp.path(), std::path::Path::new("/dev/shm"))
    {
        let elsewhere = format!("/dev/shm/gg-s3-sync-check-{}", fastrand::u32(..));
        let (code, r) = tokio::task::block_in_place(|| {
            check(&env, |m| {
                m.insert("releases".into(), json!({"keep": 2, "dir": elsewhere}));
            })
        });
        assert_eq!(code, Some(1), "{r}");
        let (s, detail) = status(&r, "releases folder");
        assert_eq!(s, "fail");
        assert!(detail.contains("not on the file system"), "{detail}");
    } else {
        eprintln!("skipped the other-file-system case: /dev/shm is on the same file system here");
    }

    std::fs::create_dir_all(env.local.parent().unwrap()).unwrap();
    std::fs::write(&env.local, b"a file").unwrap();
    let (code, r) = tokio::task::block_in_place(|| {
        check(&env, |m| {
            m.insert("releases".into(), json!({"keep": 2}));
        })
    });
    assert_eq!(code, Some(1), "{r}");
    let (s, detail) = status(&r, "releases folder");
    assert_eq!(s, "fail");
    assert!(
        detail.contains("is a file") && detail.contains("move it away"),
        "{detail}"
    );
}
