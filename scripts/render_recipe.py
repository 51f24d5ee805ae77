"""Render recipe.yaml for a custom GDK build and validate it like GDK would.

Usage: render_recipe.py [--non-root] GDK_CONFIG RECIPE_TEMPLATE OUTPUT
--non-root renders the variant that runs as the component's user (docs/deploy.md): no
RequiresPrivilege, and the artifact readable and executable by that user (Permission ALL; the
nucleus owns artifacts as root, so OWNER would let only root run it).
Validates gdk-config.json against GDK's config schema, substitutes {COMPONENT_NAME},
{COMPONENT_VERSION} and {COMPONENT_AUTHOR}, then validates the rendered recipe against GDK's
recipe schema after lower-casing every key (as GDK's RecipeValidator does) and checks GDK's
16 000-byte limit. Prints "<name> <version>" on success. Needs PyYAML and jsonschema (GDK's own
dependencies): pip install pyyaml jsonschema
"""
import json
import os
import sys

try:
    import jsonschema
    import yaml
except ImportError as e:  # pragma: no cover - depends on the machine
    sys.exit(f"render_recipe: {e.name} is missing; install GDK's dependencies: pip install pyyaml jsonschema")

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "schemas", "gdk")
MAX_RECIPE_BYTES = 16000


def fail(message):
    sys.exit(f"render_recipe: {message}")


def lower_keys(value):
    if isinstance(value, dict):
        return {str(k).lower(): lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lower_keys(v) for v in value]
    return value


def first_error(validator, document):
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        return f"{e.message} at {where}"
    return None


def non_root(text):
    """The recipe without RequiresPrivilege and with artifacts any user may read and run."""
    out = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("RequiresPrivilege:"):
            continue
        if stripped in ("Read: OWNER", "Execute: OWNER"):
            line = line.replace("OWNER", "ALL")
        out.append(line)
    return "".join(out)


def main(gdk_config_path, template_path, output_path, run_as_root=True):
    with open(os.path.join(SCHEMAS, "config_schema.json")) as f:
        config_schema = json.load(f)
    with open(os.path.join(SCHEMAS, "recipe_schema.json")) as f:
        recipe_schema = json.load(f)
    try:
        with open(gdk_config_path) as f:
            gdk = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read {gdk_config_path}: {e}")
    problem = first_error(jsonschema.Draft7Validator(config_schema), gdk)
    if problem:
        fail(f"{gdk_config_path} does not match GDK's schema: {problem}")
    (name, component), = gdk["component"].items()
    version = component["version"]
    if version == "NEXT_PATCH":
        fail("version NEXT_PATCH is resolved only by 'gdk component publish'; set a fixed version to build")
    with open(template_path) as f:
        text = f.read()
    rendered = (
        text.replace("{COMPONENT_NAME}", name)
        .replace("{COMPONENT_VERSION}", version)
        .replace("{COMPONENT_AUTHOR}", component["author"])
    )
    if not run_as_root:
        rendered = non_root(rendered)
    if len(rendered.encode()) > MAX_RECIPE_BYTES:
        fail(f"rendered recipe is {len(rendered.encode())} bytes; GDK allows {MAX_RECIPE_BYTES}")
    try:
        recipe = yaml.safe_load(rendered)
    except yaml.YAMLError as e:
        fail(f"{template_path} is not valid YAML: {e}")
    problem = first_error(jsonschema.Draft7Validator(recipe_schema), lower_keys(recipe))
    if problem:
        fail(f"rendered recipe does not match GDK's recipe schema: {problem}")
    for manifest in recipe.get("Manifests", []):
        run = manifest.get("Lifecycle", {}).get("run", {})
        perms = [a.get("Permission", {}) for a in manifest.get("Artifacts", [])]
        if not run_as_root and (run.get("RequiresPrivilege") or any(p.get("Execute") != "ALL" for p in perms)):
            fail("the non-root recipe still needs root (RequiresPrivilege or Execute: OWNER left)")
    leftover = [p for p in ("{COMPONENT_NAME}", "{COMPONENT_VERSION}", "{COMPONENT_AUTHOR}") if p in rendered]
    if leftover:
        fail(f"placeholders left in the recipe: {leftover}")
    os.makedirs(os.path.dirname(output_path) or ".", exist_ok=True)
    with open(output_path, "w") as f:
        f.write(rendered)
    print(name, version)


if __name__ == "__main__":
    args = sys.argv[1:]
    as_root = "--non-root" not in args
    args = [a for a in args if a != "--non-root"]
    if len(args) != 3:
        fail("usage: render_recipe.py [--non-root] GDK_CONFIG RECIPE_TEMPLATE OUTPUT")
    main(*args, run_as_root=as_root)
