//! recipe.yaml, gdk-config.json and the build script: schema-valid, rendered, and never
//! drifting from what the binary accepts.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use gg_s3_sync::config::{Config, KNOWN_KEYS};
use gg_s3_sync::discovery::{resolve, Facts, Found};
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn recipe() -> Value {
    let text = std::fs::read_to_string(Path::new(ROOT).join("recipe.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn default_configuration() -> serde_json::Map<String, Value> {
    recipe()["ComponentConfiguration"]["DefaultConfiguration"]
        .as_object()
        .unwrap()
        .clone()
}

fn gdk() -> Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(ROOT).join("gdk-config.json")).unwrap())
        .unwrap()
}

#[test]
fn build_script_renders_validates_and_packages() {
    let out = tempfile::tempdir().unwrap();
    let r = Command::new("bash")
        .arg(Path::new(ROOT).join("scripts/build-component"))
        .args(["--binary", common::bin(), "--out"])
        .arg(out.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                Path::new(&common::python()).parent().unwrap().display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    let (name, component) = gdk()["component"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let version = component["version"].as_str().unwrap().to_owned();
    let artifact = out.path().join(format!(
        "artifacts/{name}/{version}/gg-s3-sync-{}",
        std::env::consts::ARCH
    ));
    let meta =
        std::fs::metadata(&artifact).unwrap_or_else(|e| panic!("{}: {e}", artifact.display()));
    assert!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o100 != 0,
        "executable"
    );
    let rendered = std::fs::read_to_string(out.path().join("recipes/recipe.yaml")).unwrap();
    assert!(
        !rendered.contains("{COMPONENT_"),
        "placeholders substituted"
    );
    let v: Value = serde_norway::from_str(&rendered).unwrap();
    assert_eq!(v["ComponentName"], name.as_str());
    assert_eq!(v["ComponentVersion"], version.as_str());
    assert_eq!(v["ComponentPublisher"], component["author"]);
    assert!(
        v["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
            ["aws.greengrass.ipc.mqttproxy"]
            .get(format!("{name}:mqttproxy:1"))
            .is_some()
    );
}

fn render(gdk_config: &Path, template: &Path) -> std::process::Output {
    let out = tempfile::tempdir().unwrap();
    Command::new(common::python())
        .arg(Path::new(ROOT).join("scripts/render_recipe.py"))
        .arg(gdk_config)
        .arg(template)
        .arg(out.path().join("recipe.yaml"))
        .output()
        .unwrap()
}

#[test]
fn the_validator_rejects_what_gdk_would() {
    let dir = tempfile::tempdir().unwrap();
    let good_gdk = Path::new(ROOT).join("gdk-config.json");
    let good_recipe = Path::new(ROOT).join("recipe.yaml");
    assert!(render(&good_gdk, &good_recipe).status.success());

    let bad = dir.path().join("recipe.yaml");
    let text = std::fs::read_to_string(&good_recipe).unwrap();
    std::fs::write(
        &bad,
        text.replace(
            "RecipeFormatVersion: \"2020-01-25\"",
            "RecipeFormatVersion: \"2021-01-01\"",
        ),
    )
    .unwrap();
    let r = render(&good_gdk, &bad);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("recipeformatversion"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );

    let mut g = gdk();
    let (_, c) = g["component"]
        .as_object_mut()
        .unwrap()
        .iter_mut()
        .next()
        .unwrap();
    c["build"]["build_system"] = json!("make");
    let bad_gdk = dir.path().join("gdk-config.json");
    std::fs::write(&bad_gdk, g.to_string()).unwrap();
    let r = render(&bad_gdk, &good_recipe);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("does not match GDK's schema"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn default_configuration_has_exactly_the_accepted_keys() {
    let documented: BTreeSet<String> = default_configuration()
        .keys()
        .filter(|k| *k != "accessControl")
        .cloned()
        .collect();
    let accepted: BTreeSet<String> = KNOWN_KEYS.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(documented, accepted);
}

#[test]
fn default_configuration_values_parse_once_a_deployment_sets_bucket_and_local_dir() {
    let mut c = default_configuration();
    c.insert("bucket".into(), json!("my-bucket"));
    c.insert("localDir".into(), json!("/var/lib/sync"));
    let facts = Facts {
        nucleus_cred_endpoint: Some(Found::new(
            "x.credentials.iot.us-east-1.amazonaws.com",
            "nucleus",
        )),
        nucleus_region: Some(Found::new("us-east-1", "nucleus")),
        nucleus_role_alias: Some(Found::new("GreengrassV2TokenExchangeRoleAlias", "nucleus")),
        env_thing_name: Some("thing-1".into()),
        kernel_root: Some("/greengrass/v2".into()),
        ..Facts::default()
    };
    let resolved = resolve(&Value::Object(c), &facts);
    let parsed = Config::from_value(&resolved.document, Path::new("/w"), Path::new("/w")).unwrap();
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let cfg = parsed.config;
    assert_eq!(
        cfg.status_topic.as_deref(),
        Some("gg-s3-sync/thing-1/status")
    );
    assert_eq!(cfg.sync_interval.as_secs(), 300);
    assert_eq!(
        cfg.private_key_path,
        Path::new("/greengrass/v2/privKey.key")
    );
}

#[test]
fn access_control_covers_the_default_topics_and_versions_agree() {
    let ac = &default_configuration()["accessControl"];
    let mqtt = ac["aws.greengrass.ipc.mqttproxy"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    assert_eq!(
        mqtt["operations"],
        json!(["aws.greengrass#PublishToIoTCore"])
    );
    // MQTT wildcard '+' stands for the thing name in gg-s3-sync/{thingName}/status.
    assert_eq!(mqtt["resources"], json!(["gg-s3-sync/+/status"]));
    let pubsub = ac["aws.greengrass.ipc.pubsub"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    let resources: Vec<&str> = pubsub["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for t in [
        gg_s3_sync::config::DEFAULT_LOCAL_STATUS_TOPIC,
        gg_s3_sync::config::DEFAULT_TRIGGER_TOPIC,
    ] {
        assert!(resources.contains(&t), "{t} not granted");
    }
    let (_, component) = gdk()["component"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    assert_eq!(
        component["version"],
        env!("CARGO_PKG_VERSION"),
        "gdk-config.json and Cargo.toml versions agree"
    );
    assert!(
        component["build"]["custom_build_command"].is_array(),
        "GDK runs a string command without a shell"
    );
    for m in recipe()["Manifests"].as_array().unwrap() {
        assert_eq!(m["Platform"]["runtime"], "*", "nucleus lite needs runtime");
        assert_eq!(m["Lifecycle"]["run"]["RequiresPrivilege"], true);
        assert_eq!(m["Artifacts"][0]["Permission"]["Execute"], "OWNER");
        let script = m["Lifecycle"]["run"]["Script"].as_str().unwrap();
        assert!(
            script.contains("--kernel-root {kernel:rootPath}")
                && script.contains("--work-dir {work:path}"),
            "{script}"
        );
    }
}

/// The manifest each nucleus picks for a device. Classic (`PlatformResolver`): every key of
/// the manifest's `Platform` must equal the device's attribute (`*` matches anything); the
/// device reports `architecture.detail` only on 32-bit ARM. Lite (`modules/ggl-recipe/src/
/// recipe.c`, `manifest_selection`): `runtime` must be `*` or `aws_nucleus_lite`, `os` linux,
/// `architecture` absent, `*` or equal; `architecture.detail` is not looked at.
fn selected_artifact(lite: bool, arch: &str, detail: Option<&str>) -> Option<String> {
    let recipe = recipe();
    let manifests = recipe["Manifests"].as_array().unwrap();
    manifests.iter().find_map(|m| {
        let p = m["Platform"].as_object().unwrap();
        let get = |k: &str| p.get(k).and_then(Value::as_str);
        let ok = if lite {
            matches!(get("runtime"), Some("*" | "aws_nucleus_lite"))
                && matches!(get("os"), Some("linux" | "*" | "all"))
                && get("architecture").is_none_or(|a| a == "*" || a == arch)
        } else {
            p.iter().all(|(k, v)| {
                let want = v.as_str().unwrap();
                let have = match k.as_str() {
                    "os" => Some("linux"),
                    "architecture" => Some(arch),
                    "architecture.detail" => detail,
                    "runtime" => Some("aws_nucleus_classic"),
                    _ => None,
                };
                want == "*" || have == Some(want)
            })
        };
        ok.then(|| {
            let uri = m["Artifacts"][0]["URI"].as_str().unwrap();
            uri.rsplit('/').next().unwrap().to_owned()
        })
    })
}

#[test]
fn every_real_platform_finds_its_manifest_on_both_nuclei() {
    let cases = [
        ("amd64", None, "gg-s3-sync-x86_64"),
        ("aarch64", None, "gg-s3-sync-aarch64"),
        ("arm", Some("armv7l"), "gg-s3-sync-armv7"),
        // 32-bit userland on a 64-bit ARM CPU (e.g. Raspberry Pi OS 32-bit on a Pi 4).
        ("arm", Some("armv8l"), "gg-s3-sync-armv7"),
        ("arm", Some("armv6l"), "gg-s3-sync-armv7"),
    ];
    for (arch, detail, artifact) in cases {
        for lite in [false, true] {
            // Lite reports no detail to recipe-runner's manifest selection.
            let detail = if lite { None } else { detail };
            assert_eq!(
                selected_artifact(lite, arch, detail).as_deref(),
                Some(artifact),
                "lite={lite} {arch} {detail:?}"
            );
        }
    }
    let text = std::fs::read_to_string(Path::new(ROOT).join("recipe.yaml")).unwrap();
    assert!(
        !text.contains("arm71"),
        "no nucleus reports architecture.detail arm71"
    );
}

/// recipe-runner reads a recipe into `file_mem[8196]` (modules/ggl-recipe/src/recipe.c); a
/// larger one fails to start on lite. The template's placeholders grow when rendered, so the
/// template keeps room for a long name, version and author.
#[test]
fn recipe_fits_lite_s_recipe_buffer() {
    const LITE_RECIPE_BUFFER: usize = 8196;
    let text = std::fs::read_to_string(Path::new(ROOT).join("recipe.yaml")).unwrap();
    let worst = text
        .replace("{COMPONENT_NAME}", &"n".repeat(128))
        .replace("{COMPONENT_VERSION}", &"9".repeat(64))
        .replace("{COMPONENT_AUTHOR}", &"a".repeat(128));
    assert!(
        worst.len() < LITE_RECIPE_BUFFER,
        "rendered recipe would be {} bytes; lite reads at most {LITE_RECIPE_BUFFER}",
        worst.len()
    );
}

/// Nucleus lite decodes the rendered recipe into one object and claims it with
/// `gg_arena_claim_obj` (modules/ggl-recipe/src/recipe.c, `ggl_recipe_get_from_file`), whose
/// walk refuses more than `GG_MAX_OBJECT_SUBOBJECTS` (255) sub-objects in the whole tree: each
/// map entry counts 2 and each list item 1 (gg_sdk src/object_visit.c). Over it, recipe-runner
/// logs "Visited object's subobjects exceeds maximum" and never starts the component.
#[test]
fn recipe_fits_lite_s_object_budget() {
    const GG_MAX_OBJECT_SUBOBJECTS: usize = 255;
    fn count(v: &Value) -> usize {
        match v {
            Value::Object(m) => m.values().map(|x| 2 + count(x)).sum(),
            Value::Array(a) => a.iter().map(|x| 1 + count(x)).sum(),
            _ => 0,
        }
    }
    let text = std::fs::read_to_string(Path::new(ROOT).join("recipe.yaml")).unwrap();
    let recipe: Value = serde_norway::from_str(&text).unwrap();
    let n = count(&recipe);
    assert!(
        n <= GG_MAX_OBJECT_SUBOBJECTS,
        "the recipe has {n} sub-objects; nucleus lite refuses more than {GG_MAX_OBJECT_SUBOBJECTS}"
    );
}

/// Nucleus lite's ggconfigd refuses to write a key below one that holds a value ("value
/// already present for key … Failing request.", modules/ggconfigd/src/db_interface.c): a
/// setting that takes a map must default to a map, or a deployment's merge
/// (`{"releases": {"keep": "3"}}`) fails on lite and the setting can never be turned on.
#[test]
fn map_settings_default_to_maps_so_lite_can_merge_into_them() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("recipe.yaml")).unwrap();
    let recipe: Value = serde_norway::from_str(&text).unwrap();
    let defaults = &recipe["ComponentConfiguration"]["DefaultConfiguration"];
    for key in ["mqtt", "releases", "accessControl"] {
        assert!(
            defaults[key].is_object(),
            "{key} defaults to {}",
            defaults[key]
        );
    }
}

/// The fake nucleus grants what the recipe grants (its tests rely on the same accessControl).
#[test]
fn fake_nucleus_uses_the_recipe_access_control() {
    let name = "com.example.GgS3Sync";
    let text = std::fs::read_to_string(Path::new(ROOT).join("recipe.yaml"))
        .unwrap()
        .replace("{COMPONENT_NAME}", name);
    let recipe: Value = serde_norway::from_str(&text).unwrap();
    assert_eq!(
        recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"],
        devstack::nucleus::recipe_access_control(name)
    );
}

/// `scripts/build-component --non-root`: the variant docs/deploy.md describes, with nothing
/// left that needs root.
#[test]
fn non_root_rendering_needs_no_root() {
    let out = tempfile::tempdir().unwrap();
    let r = Command::new(common::python())
        .arg(Path::new(ROOT).join("scripts/render_recipe.py"))
        .arg("--non-root")
        .arg(Path::new(ROOT).join("gdk-config.json"))
        .arg(Path::new(ROOT).join("recipe.yaml"))
        .arg(out.path().join("recipe.yaml"))
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = std::fs::read_to_string(out.path().join("recipe.yaml")).unwrap();
    let v: Value = serde_norway::from_str(&text).unwrap();
    for m in v["Manifests"].as_array().unwrap() {
        assert!(
            m["Lifecycle"]["run"].get("RequiresPrivilege").is_none(),
            "{m}"
        );
        let p = &m["Artifacts"][0]["Permission"];
        assert_eq!((&p["Read"], &p["Execute"]), (&json!("ALL"), &json!("ALL")));
    }
}

/// Lite sets AWS_CONTAINER_CREDENTIALS_FULL_URI only for components that depend on the token
/// exchange service; SOFT, so a device without it still deploys.
#[test]
fn the_recipe_depends_softly_on_the_token_exchange_service() {
    let dep = &recipe()["ComponentDependencies"]["aws.greengrass.TokenExchangeService"];
    assert_eq!(dep["DependencyType"], "SOFT", "{dep}");
    assert!(dep["VersionRequirement"].is_string());
}

/// The same refusal through the fake nucleus's lite personality (which reproduces ggconfigd's):
/// a deployment turns releases on over the recipe's defaults; over a `""` default it could not.
#[tokio::test(flavor = "multi_thread")]
async fn a_lite_deployment_can_turn_releases_on_over_the_recipe_defaults() {
    use devstack::nucleus::{FakeNucleus, Personality};
    let text = std::fs::read_to_string(Path::new(ROOT).join("recipe.yaml")).unwrap();
    let recipe: Value = serde_norway::from_str(&text).unwrap();
    let defaults = recipe["ComponentConfiguration"]["DefaultConfiguration"].clone();
    let dir = tempfile::tempdir().unwrap();
    let nucleus = FakeNucleus::start_as(dir.path(), Personality::Lite)
        .await
        .unwrap();
    nucleus.register_component("com.example.S3Sync", defaults.clone());
    assert!(nucleus.deploy_configuration("com.example.S3Sync", &json!({"releases": {"keep": "3"}})));
    assert_eq!(
        nucleus.configuration("com.example.S3Sync")["releases"]["keep"],
        "3"
    );

    let mut scalar = defaults;
    scalar["releases"] = json!("");
    nucleus.register_component("com.example.Other", scalar);
    assert!(
        !nucleus.deploy_configuration("com.example.Other", &json!({"releases": {"keep": "3"}})),
        "lite refuses keys below a value"
    );
    assert_eq!(nucleus.configuration("com.example.Other")["releases"], "");
}
