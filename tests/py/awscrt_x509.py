"""Fetch credentials with AWS's own X.509 credentials provider (aws-c-auth via awscrt).

Usage: awscrt_x509.py ENDPOINT THING ROLE_ALIAS CERT KEY CA
Prints {"accessKeyId": ..., "expiration": ...} (never the secret) or {"error": ...}; exit 0/1.
aws-c-auth always connects to port 443 of ENDPOINT.
"""
import json
import sys

from awscrt import auth, io

endpoint, thing, alias, cert, key, ca = sys.argv[1:7]
opts = io.TlsContextOptions.create_client_with_mtls_from_path(cert, key)
opts.override_default_trust_store_from_path(None, ca)
provider = auth.AwsCredentialsProvider.new_x509(
    endpoint=endpoint, thing_name=thing, role_alias=alias, tls_ctx=io.ClientTlsContext(opts)
)
try:
    c = provider.get_credentials().result(timeout=20)
except Exception as e:  # awscrt raises AwsCrtError with a name
    print(json.dumps({"error": getattr(e, "name", type(e).__name__)}))
    sys.exit(1)
print(json.dumps({
    "accessKeyId": c.access_key_id,
    "hasSecret": bool(c.secret_access_key),
    "hasToken": bool(c.session_token),
    "expiration": c.expiration.isoformat() if c.expiration else None,
}))
