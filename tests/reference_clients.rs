//! The devstack fakes checked by clients nobody here wrote: curl and AWS's own X.509
//! credentials provider (awscrt) against the credentials endpoint; boto3 and the aws-cli
//! against S3. If a fake drifts from AWS's behaviour, these fail.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};

use common::{noise, python, tree, Env};
use devstack::{Options, Policy};
use serde_json::Value;

fn curl(env: &Env, args: &[&str], path: &str) -> Output {
    let url = format!("https://{}{path}", env.stack.credentials_endpoint());
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&env.stack.ca.files.cert_path)
        .args(args)
        .arg("-w")
        .arg("\n%{http_code}")
        .arg(url)
        .output()
        .expect("curl is installed")
}

fn split_status(out: &Output) -> (Value, u16) {
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (
        serde_json::from_str(body).unwrap_or(Value::Null),
        code.trim().parse().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_with_client_certificate() {
    let env = Env::default().await;
    let cert = env.stack.device.cert_path.to_str().unwrap().to_owned();
    let key = env.stack.device.key_path.to_str().unwrap().to_owned();
    let alias = env.stack.options.role_alias.clone();
    let thing_header = format!("x-amzn-iot-thingname: {}", env.stack.options.thing_name);
    let auth = [
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
        "-H",
        thing_header.as_str(),
    ];

    let out = curl(&env, &auth, &format!("/role-aliases/{alias}/credentials"));
    let (body, status) = split_status(&out);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out.stderr));
    let c = &body["credentials"];
    for field in [
        "accessKeyId",
        "secretAccessKey",
        "sessionToken",
        "expiration",
    ] {
        assert!(
            c[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field} in {body}"
        );
    }
    assert!(c["expiration"].as_str().unwrap().ends_with('Z'));

    let out = curl(
        &env,
        &[
            "--cert",
            &cert,
            "--key",
            &key,
            "-H",
            "x-amzn-iot-thingname: not-mine",
        ],
        &format!("/role-aliases/{alias}/credentials"),
    );
    assert_eq!(
        split_status(&out),
        (
            serde_json::json!({"message": "Invalid thing name passed"}),
            403
        )
    );

    let out = curl(&env, &auth, "/role-aliases/Nope/credentials");
    assert_eq!(
        split_status(&out),
        (
            serde_json::json!({"message": "Role alias does not exist"}),
            404
        )
    );

    // Without a client certificate the TLS layer refuses: no HTTP response at all.
    let out = curl(&env, &[], &format!("/role-aliases/{alias}/credentials"));
    assert!(
        !out.status.success(),
        "must fail without a client certificate"
    );
    assert_eq!(
        split_status(&out).1,
        0,
        "no HTTP status without a client certificate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn awscrt_x509_credentials_provider() {
    // aws-c-auth always connects to port 443; the tests run as root (see README).
    let env = Env::start(Options {
        credentials_bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 443)),
        ..Options::default()
    })
    .await;
    let run = |thing: &str| {
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/py/awscrt_x509.py"
            ))
            .args(["localhost", thing, &env.stack.options.role_alias])
            .arg(&env.stack.device.cert_path)
            .arg(&env.stack.device.key_path)
            .arg(&env.stack.ca.files.cert_path)
            .output()
            .expect("python with awscrt (run scripts/test)")
    };
    let out = tokio::task::block_in_place(|| run(&env.stack.options.thing_name));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["accessKeyId"].as_str().unwrap().starts_with("ASIA"),
        "{v}"
    );
    assert_eq!(
        (v["hasSecret"].as_bool(), v["hasToken"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(
        v["expiration"].is_string(),
        "awscrt parsed the expiration: {v}"
    );
    assert!(
        env.stack
            .account
            .secret_for(v["accessKeyId"].as_str().unwrap())
            .is_some(),
        "awscrt received credentials the fake issued"
    );

    let out = tokio::task::block_in_place(|| run("not-my-thing"));
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["error"], "AWS_AUTH_CREDENTIALS_PROVIDER_HTTP_STATUS_FAILURE",
        "{v}"
    );
}

fn boto3(env: &Env, prefix: &str, ak: &str, sk: &str, token: Option<&str>) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/boto3_probe.py"
    ))
    .args([env.stack.s3.url().as_str(), env.bucket(), prefix])
    .env("AWS_ACCESS_KEY_ID", ak)
    .env("AWS_SECRET_ACCESS_KEY", sk)
    .env("AWS_CONFIG_FILE", "/dev/null")
    .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    .env_remove("AWS_PROFILE");
    match token {
        Some(t) => cmd.env("AWS_SESSION_TOKEN", t),
        None => cmd.env_remove("AWS_SESSION_TOKEN"),
    };
    let out = cmd.output().expect("python with boto3 (run scripts/test)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_sees_aws_behaviour_from_the_s3_fake() {
    let env = Env::default().await;
    env.put("p/a.txt", "alpha").await;
    env.put("p/b/c.txt", "charlie").await;
    env.put("p/d.bin", noise(70_000, 3)).await;
    let c = env.session();
    let probe = |secret: &str, token: Option<&str>| {
        tokio::task::block_in_place(|| boto3(&env, "p/", &c.access_key_id, secret, token))
    };

    let v = probe(&c.secret_access_key, Some(&c.session_token));
    let list = v["list"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(list.len(), 3, "paginated with PageSize 2: {v}");
    assert_eq!(list[0]["key"], "p/a.txt");
    assert_eq!(
        list[0]["etag"], "\"2c1743a391305fbf367df8e4f069f9f9\"",
        "listing carries the MD5 ETag: {v}"
    );
    assert_eq!(
        v["get"]["etag"], list[0]["etag"],
        "GET and listing agree on the ETag"
    );
    assert_eq!(v["head"], list[0]["etag"]);
    assert_eq!(
        v["get_if_match_other"],
        serde_json::json!({"error": "PreconditionFailed", "status": 412})
    );
    assert_eq!(v["get_if_none_match_same"]["status"], 304, "{v}");
    assert_eq!(
        v["put"]["error"], "AccessDenied",
        "the role only reads: {v}"
    );

    // A wrong session token, and an access key without its token.
    let v = probe(&c.secret_access_key, Some("bogus"));
    assert_eq!(v["list"]["error"], "InvalidToken", "{v}");
    let v = probe(&c.secret_access_key, None);
    assert_eq!(v["list"]["error"], "InvalidAccessKeyId", "{v}");
    // A wrong secret: the signature is really verified.
    let v = probe("wrong-secret", Some(&c.session_token));
    assert_eq!(v["list"]["error"], "SignatureDoesNotMatch", "{v}");
    // Expired session.
    env.stack.account.expire_all_sessions();
    let v = probe(&c.secret_access_key, Some(&c.session_token));
    assert_eq!(v["list"]["error"], "ExpiredToken", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_with_get_object_only_credentials() {
    let o = Options::default();
    let env = Env::start(Options {
        policy: Policy::get_only(&o.bucket),
        ..o
    })
    .await;
    env.put("p/a.txt", "alpha").await;
    let c = env.session();
    let v = tokio::task::block_in_place(|| {
        boto3(
            &env,
            "p/",
            &c.access_key_id,
            &c.secret_access_key,
            Some(&c.session_token),
        )
    });
    assert_eq!(
        v["list"],
        serde_json::json!({"error": "AccessDenied", "status": 403})
    );
    assert_eq!(
        v["get_first_known"]["length"], 5,
        "GetObject is allowed: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_cli_sync_and_the_component_produce_the_same_tree() {
    let env = Env::default().await;
    env.put("s/one.txt", "1").await;
    env.put("s/deep/er/two.bin", noise(123_456, 9)).await;
    env.put("s/three.txt", "three").await;
    let c = env.session();
    let dest = env.tmp.path().join("aws-cli");
    let out = tokio::task::block_in_place(|| {
        Command::new(python())
            .args([
                "-m",
                "awscli",
                "s3",
                "sync",
                "--only-show-errors",
                "--endpoint-url",
            ])
            .arg(env.stack.s3.url())
            .arg(format!("s3://{}/s/", env.bucket()))
            .arg(&dest)
            .env("AWS_ACCESS_KEY_ID", &c.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &c.secret_access_key)
            .env("AWS_SESSION_TOKEN", &c.session_token)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .expect("python with awscli (run scripts/test)")
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.once("s/").assert_ok();
    assert_eq!(tree(&dest), tree(&env.local));
    assert_eq!(tree(&dest).len(), 3);
}

/// boto3 lists with encoding-type=url and decodes with unquote_plus: the devstack's encoding of
/// keys that XML cannot carry (and of spaces and plus signs) reads back exactly.
#[tokio::test(flavor = "multi_thread")]
async fn boto3_reads_url_encoded_listings_from_the_s3_fake() {
    let env = Env::default().await;
    let keys = [
        "enc/a\u{1}b",
        "enc/space and+plus",
        "enc/café.txt",
        "enc/pct%41",
    ];
    for k in keys {
        env.stack
            .s3
            .put_virtual_object(env.bucket(), k, b"x".to_vec());
    }
    let (ak, sk) = env.stack.account.admin_credentials();
    let out = tokio::task::block_in_place(|| boto3(&env, "enc/", &ak, &sk, None));
    let mut listed: Vec<&str> = out["list"]
        .as_array()
        .unwrap_or_else(|| panic!("{out}"))
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(listed, want);
}

/// boto3 sees the devstack's SSE-KMS objects as S3 serves them: `ServerSideEncryption:
/// aws:kms` with the key id, and an ETag that is not the MD5 of the data.
#[tokio::test(flavor = "multi_thread")]
async fn boto3_sees_sse_kms_objects_as_s3_serves_them() {
    let env = Env::default().await;
    env.stack.s3.put_virtual_encrypted_object(
        env.bucket(),
        "kms/secret.bin",
        noise(10_000, 4),
        devstack::s3::Encryption::Kms,
    );
    let (ak, sk) = env.stack.account.admin_credentials();
    let out = tokio::task::block_in_place(|| boto3(&env, "kms/", &ak, &sk, None));
    let get = &out["get"];
    assert_eq!(get["sse"], "aws:kms", "{out}");
    assert!(
        get["kms_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("arn:aws:kms:")),
        "{out}"
    );
    assert_ne!(
        get["etag"].as_str().unwrap().trim_matches('"'),
        get["md5"].as_str().unwrap(),
        "an SSE-KMS ETag is not the MD5 of the data"
    );
    assert_eq!(get["length"], 10_000);
}

/// botocore's container credential provider (what every AWS SDK component under Greengrass
/// uses) reads the devstack's token exchange service like the nucleus's, as the classic nucleus
/// and as nucleus lite answer: the URI and the Authorization token from the environment, the
/// container format, and a refusal for a wrong token (lite: a malformed or unknown SVCUID).
#[tokio::test(flavor = "multi_thread")]
async fn botocore_container_provider_reads_the_devstack_tes() {
    use devstack::tes::Flavor;
    let env = Env::default().await;
    // Lite's SVCUIDs are 16 characters.
    const TOKEN: &str = "svcuid0123456789";
    for flavor in [Flavor::Classic, Flavor::Lite] {
        let tes = env.stack.start_tes(flavor, 0, TOKEN).await.unwrap();
        let script = r#"
import json
from botocore.credentials import ContainerProvider
try:
    f = ContainerProvider().load().get_frozen_credentials()
    print(json.dumps({"key": f.access_key, "token": bool(f.token)}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__}))
"#;
        let run = |token: &str| {
            let out = Command::new(python())
                .args(["-c", script])
                .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", tes.uri())
                .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", token)
                .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                .output()
                .unwrap();
            serde_json::from_slice::<Value>(&out.stdout)
                .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
        };
        let ok = tokio::task::block_in_place(|| run(TOKEN));
        assert!(
            ok["key"].as_str().is_some_and(|k| k.starts_with("ASIA")),
            "{flavor:?}: {ok}"
        );
        assert_eq!(ok["token"], true, "{flavor:?}");
        for wrong in ["wrong", "0123456789svcuid"] {
            let refused = tokio::task::block_in_place(|| run(wrong));
            assert!(
                refused.get("error").is_some(),
                "{flavor:?} {wrong}: {refused}"
            );
        }
        tes.stop().await;
    }
}

/// boto3 against the devstack's object versions (what pinned manifest entries read): the exact
/// version's bytes with its id, 404 NoSuchVersion for a missing one, and AccessDenied without
/// s3:GetObjectVersion.
#[tokio::test(flavor = "multi_thread")]
async fn boto3_reads_object_versions_as_s3_serves_them() {
    let o = Options::default();
    let env = Env::start(Options {
        policy: Policy::read_versions(&o.bucket),
        ..o
    })
    .await;
    let b = env.bucket().to_owned();
    let v1 = env
        .stack
        .s3
        .put_object_version(&b, "v/m.bin", "one")
        .await
        .unwrap();
    env.stack
        .s3
        .put_object_version(&b, "v/m.bin", "two")
        .await
        .unwrap();
    let probe = |env: &Env, c: &devstack::account::Issued| {
        let out = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/py/boto3_versions.py"
            ))
            .args([
                env.stack.s3.url().as_str(),
                env.bucket(),
                "v/m.bin",
                v1.as_str(),
            ])
            .env("AWS_ACCESS_KEY_ID", &c.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &c.secret_access_key)
            .env("AWS_SESSION_TOKEN", &c.session_token)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("AWS_PROFILE")
            .output()
            .expect("python with boto3 (run scripts/test)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let v = tokio::task::block_in_place(|| probe(&env, &env.session()));
    assert_eq!(v["current"]["body"], "two", "{v}");
    assert_eq!(
        v["pinned"],
        serde_json::json!({"body": "one", "version": v1}),
        "{v}"
    );
    assert_eq!(
        v["missing"],
        serde_json::json!({"error": "NoSuchVersion", "status": 404}),
        "{v}"
    );

    // The same bucket through a role with s3:GetObject only.
    env.stack.account.put_alias(
        &env.stack.options.role_alias,
        devstack::RoleAlias {
            duration: std::time::Duration::from_secs(3600),
            role: Some(devstack::Role::new(Policy::read_bucket(&b))),
        },
    );
    let v = tokio::task::block_in_place(|| probe(&env, &env.session()));
    assert_eq!(v["current"]["body"], "two", "{v}");
    assert_eq!(v["pinned"]["error"], "AccessDenied", "{v}");
}
