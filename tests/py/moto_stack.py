"""An S3 nobody here wrote, with IAM enforcement: moto server plus a minimal mTLS credentials
provider that mints real moto STS session credentials for an IAM role.

Usage: moto_stack.py MODE CA_PEM SERVER_PEM SERVER_KEY
  MODE: "read" (GetObject + ListBucket) or "getonly" (GetObject only).
Prints one JSON line: {"s3", "credentials", "bucket", "alias", "objects": {key: md5}},
then serves until stdin closes.
"""
import hashlib
import json
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import requests
from moto.server import ThreadedMotoServer

mode, ca_pem, server_pem, server_key = sys.argv[1:5]
BUCKET = "moto-bucket"
ALIAS = "MotoRoleAlias"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


port = free_port()
moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
moto.start()
endpoint = f"http://127.0.0.1:{port}"
admin = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")

# Set-up runs before authentication is switched on.
s3 = boto3.client("s3", **admin)
s3.create_bucket(Bucket=BUCKET)
objects = {
    "p/a.txt": b"alpha",
    "p/sub/b.bin": bytes((i * 2654435761 >> 24) & 0xFF for i in range(100_000)),
    "p/c.txt": b"charlie",
    "outside/d.txt": b"not synced",
}
for key, body in objects.items():
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)

iam = boto3.client("iam", **admin)
# The "minter" user stands in for the credentials-provider service. moto evaluates only AWS
# principals in trust policies, so the trust policy names it next to the real service.
minter = iam.create_user(UserName="minter")["User"]["Arn"]
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "credentials.iot.amazonaws.com", "AWS": minter}, "Action": "sts:AssumeRole"}]}
role = iam.create_role(RoleName="gg-sync-role", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
statements = [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}]
if mode == "read":
    statements.append({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{BUCKET}"})
iam.put_role_policy(RoleName="gg-sync-role", PolicyName="s3", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}))
iam.put_user_policy(UserName="minter", PolicyName="assume", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role}]}))
key = iam.create_access_key(UserName="minter")["AccessKey"]
requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}, timeout=10).raise_for_status()
sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])


class Provider(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != f"/role-aliases/{ALIAS}/credentials":
            return self.reply(404, {"message": "Role alias does not exist"})
        c = sts.assume_role(RoleArn=role, RoleSessionName="gg-session")["Credentials"]
        self.reply(200, {"credentials": {
            "accessKeyId": c["AccessKeyId"],
            "secretAccessKey": c["SecretAccessKey"],
            "sessionToken": c["SessionToken"],
            "expiration": c["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        }})


ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(ca_pem)
ctx.load_cert_chain(server_pem, server_key)
httpd = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
threading.Thread(target=httpd.serve_forever, daemon=True).start()

print(json.dumps({
    "s3": endpoint,
    "credentials": f"localhost:{httpd.server_address[1]}",
    "bucket": BUCKET,
    "alias": ALIAS,
    "objects": {k: hashlib.md5(v).hexdigest() for k, v in objects.items()},
}), flush=True)
sys.stdin.read()
httpd.shutdown()
moto.stop()
