"""Exercise the devstack S3 with boto3 (botocore's SigV4, its own XML parsing).

Usage: boto3_probe.py ENDPOINT BUCKET PREFIX
Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.
Prints one JSON document with what each call returned; error codes instead of exceptions.
"""
import hashlib
import json
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, bucket, prefix = sys.argv[1:4]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)


def attempt(fn):
    try:
        return fn()
    except ClientError as e:
        return {"error": e.response["Error"]["Code"], "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}


def listing():
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 2}):
        for o in page.get("Contents", []):
            keys.append({"key": o["Key"], "etag": o.get("ETag"), "size": o["Size"]})
    return keys


def get(key, **kw):
    r = s3.get_object(Bucket=bucket, Key=key, **kw)
    body = r["Body"].read()
    return {
        "etag": r["ETag"],
        "sha256": hashlib.sha256(body).hexdigest(),
        "md5": hashlib.md5(body).hexdigest(),
        "length": len(body),
        "sse": r.get("ServerSideEncryption"),
        "kms_key": r.get("SSEKMSKeyId"),
    }


out = {"list": attempt(listing)}
if isinstance(out["list"], list) and out["list"]:
    first = out["list"][0]
    out["get"] = attempt(lambda: get(first["key"]))
    out["get_if_match_other"] = attempt(lambda: get(first["key"], IfMatch='"0000"'))
    out["get_if_none_match_same"] = attempt(lambda: get(first["key"], IfNoneMatch=first["etag"]))
    out["head"] = attempt(lambda: s3.head_object(Bucket=bucket, Key=first["key"])["ETag"])
out["get_first_known"] = attempt(lambda: get(prefix + "a.txt"))
out["put"] = attempt(lambda: s3.put_object(Bucket=bucket, Key=prefix + "written-by-boto3", Body=b"x")["ETag"])
print(json.dumps(out))
