"""A stand-in for the AWS CLI that records calls (arguments and file:// documents).

Env: AWS_STUB_LOG (JSON lines written here), AWS_STUB_STATE ("fresh": nothing exists;
"existing": role, alias and policy exist), AWS_STUB_POLICY_DOC (the existing IoT policy).
"""
import json
import os
import sys

args = sys.argv[1:]
docs = {a: open(a[len("file://"):]).read() for a in args if a.startswith("file://")}
with open(os.environ["AWS_STUB_LOG"], "a") as log:
    log.write(json.dumps({"args": args, "documents": docs}) + "\n")

existing = os.environ.get("AWS_STUB_STATE") == "existing"
words = [a for a in args if not a.startswith("-")]
command = " ".join(words[:2]) if args[0] != "--region" else " ".join(w for w in args[2:4])


def has(*seq):
    return all(s in args for s in seq)


if has("sts", "get-caller-identity"):
    print("123456789012")
elif has("iam", "get-role") or has("iot", "describe-role-alias") or (has("iot", "get-policy") and "--query" not in args):
    if not existing:
        print("An error occurred (NoSuchEntity/ResourceNotFoundException)", file=sys.stderr)
        sys.exit(254)
    print("{}")
elif has("iot", "get-policy"):
    print(os.environ.get("AWS_STUB_POLICY_DOC", "{}"))
elif has("iot", "list-thing-principals"):
    print("arn:aws:iot:eu-west-1:123456789012:cert/abc123")
else:
    print("{}")
