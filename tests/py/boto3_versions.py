"""boto3 reads object versions from the devstack S3 as from S3: GetObject with VersionId
returns that version's bytes and names it in x-amz-version-id; a missing version is 404
NoSuchVersion; credentials without s3:GetObjectVersion are refused (AccessDenied).

argv: endpoint bucket key version-id; prints JSON."""
import json
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, bucket, key, version = sys.argv[1:5]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)


def get(**kw):
    try:
        r = s3.get_object(Bucket=bucket, Key=key, **kw)
        return {"body": r["Body"].read().decode(), "version": r.get("VersionId")}
    except ClientError as e:
        return {
            "error": e.response["Error"]["Code"],
            "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
        }


print(
    json.dumps(
        {
            "current": get(),
            "pinned": get(VersionId=version),
            "missing": get(VersionId="A" * 32),
        }
    )
)
