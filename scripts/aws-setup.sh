#!/usr/bin/env bash
# Creates (or brings up to date) what gg-s3-sync needs in an AWS account. Safe to run again.
#
#   1. an IAM role trusted by credentials.iot.amazonaws.com,
#   2. its S3 policy: s3:GetObject on <bucket>/<prefix>*, plus s3:ListBucket (limited to the
#      prefix) in prefix mode,
#   3. the AWS IoT role alias pointing at the role,
#   4. an AWS IoT policy allowing iot:AssumeRoleWithCertificate on the alias,
#   5. that policy attached to the device's certificate.
#
# Usage:
#   scripts/aws-setup.sh --bucket BUCKET --thing-name THING [--prefix PREFIX] [--mode prefix|keys]
#       [--role-name NAME] [--role-alias ALIAS] [--policy-name NAME] [--duration SECONDS]
#       [--certificate-arn ARN] [--region REGION] [--dry-run]
# --mode keys grants s3:GetObject only (for the keys/manifestKey settings).
# --dry-run prints every AWS CLI call, with its policy documents, and runs none.
# Needs the AWS CLI with credentials allowed to manage IAM roles and AWS IoT.
set -euo pipefail

bucket="" prefix="" mode="prefix" thing="" cert_arn="" region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
role_name="GgS3SyncRole" alias="GgS3SyncRoleAlias" policy_name="GgS3SyncAssumeRolePolicy"
duration=3600 dry_run=0
while (($#)); do
  case "$1" in
    --bucket) bucket="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --mode) mode="$2"; shift 2 ;;
    --thing-name) thing="$2"; shift 2 ;;
    --certificate-arn) cert_arn="$2"; shift 2 ;;
    --region) region="$2"; shift 2 ;;
    --role-name) role_name="$2"; shift 2 ;;
    --role-alias) alias="$2"; shift 2 ;;
    --policy-name) policy_name="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "aws-setup: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "aws-setup: $*" >&2; exit 2; }
[ -n "$bucket" ] || die "--bucket is required"
[ -n "$thing" ] || [ -n "$cert_arn" ] || die "--thing-name (or --certificate-arn) is required"
[ -n "$region" ] || die "--region is required (or set AWS_REGION)"
case "$mode" in prefix|keys) ;; *) die "--mode must be prefix or keys" ;; esac
case "$duration" in ''|*[!0-9]*) die "--duration must be a number of seconds" ;; esac
((duration >= 900 && duration <= 43200)) || die "--duration must be 900 to 43200 seconds (AWS IoT role alias limits)"
[[ "$prefix" != /* ]] || die "--prefix must not start with '/'"
if [ -n "$prefix" ] && [[ "$prefix" != */ ]]; then prefix="$prefix/"; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs an AWS CLI call, or prints it under --dry-run. file:// documents are shown inline.
run() {
  if ((dry_run)); then
    printf 'aws'; printf ' %q' "$@"; printf '\n'
    for a in "$@"; do
      if [[ "$a" == file://* ]]; then sed 's/^/    /' "${a#file://}"; fi
    done
    return 0
  fi
  aws --region "$region" "$@"
}
# Read-only lookups: skipped under --dry-run (the printed plan assumes nothing exists yet).
exists() { ((dry_run)) && return 1; aws --region "$region" "$@" >/dev/null 2>&1; }

if ((dry_run)); then
  account="<account-id>"
else
  account=$(aws --region "$region" sts get-caller-identity --query Account --output text)
fi
role_arn="arn:aws:iam::${account}:role/${role_name}"
alias_arn="arn:aws:iot:${region}:${account}:rolealias/${alias}"

cat > "$work/trust.json" <<JSON
{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "credentials.iot.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
JSON
list_statement=""
if [ "$mode" = prefix ]; then
  # With a prefix, listing is limited to it. Without one the component lists the whole bucket,
  # and a request without s3:prefix would not match a condition, so none is set.
  condition=""
  [ -n "$prefix" ] && condition=", \"Condition\": {\"StringLike\": {\"s3:prefix\": [\"${prefix}*\"]}}"
  list_statement=", {\"Effect\": \"Allow\", \"Action\": \"s3:ListBucket\", \"Resource\": \"arn:aws:s3:::${bucket}\"${condition}}"
fi
cat > "$work/s3.json" <<JSON
{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::${bucket}/${prefix}*"}${list_statement}]}
JSON
cat > "$work/iot.json" <<JSON
{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate", "Resource": "${alias_arn}"}]}
JSON

echo "== 1. IAM role $role_name (trusted by credentials.iot.amazonaws.com)"
if exists iam get-role --role-name "$role_name"; then
  run iam update-assume-role-policy --role-name "$role_name" --policy-document "file://$work/trust.json"
else
  run iam create-role --role-name "$role_name" --assume-role-policy-document "file://$work/trust.json" \
    --description "gg-s3-sync: S3 access for devices, via the AWS IoT credentials provider" --max-session-duration "$((duration > 3600 ? duration : 3600))"
fi

echo "== 2. S3 permissions ($mode mode)"
run iam put-role-policy --role-name "$role_name" --policy-name gg-s3-sync-s3 --policy-document "file://$work/s3.json"

echo "== 3. AWS IoT role alias $alias"
if exists iot describe-role-alias --role-alias "$alias"; then
  run iot update-role-alias --role-alias "$alias" --role-arn "$role_arn" --credential-duration-seconds "$duration"
else
  run iot create-role-alias --role-alias "$alias" --role-arn "$role_arn" --credential-duration-seconds "$duration"
fi

echo "== 4. AWS IoT policy $policy_name (iot:AssumeRoleWithCertificate on the alias)"
if exists iot get-policy --policy-name "$policy_name"; then
  current=$(aws --region "$region" iot get-policy --policy-name "$policy_name" --query policyDocument --output text | tr -d ' \n\t')
  if [ "$current" = "$(tr -d ' \n\t' < "$work/iot.json")" ]; then
    echo "up to date"
  else
    run iot create-policy-version --policy-name "$policy_name" --policy-document "file://$work/iot.json" --set-as-default
  fi
else
  run iot create-policy --policy-name "$policy_name" --policy-document "file://$work/iot.json"
fi

echo "== 5. attach it to the device certificate"
if [ -z "$cert_arn" ]; then
  if ((dry_run)); then
    cert_arn="<certificate-arn of thing $thing>"
    echo "aws iot list-thing-principals --thing-name $thing   # finds the certificate"
  else
    cert_arn=$(aws --region "$region" iot list-thing-principals --thing-name "$thing" --query 'principals[0]' --output text)
    [[ "$cert_arn" == arn:aws:iot:*:cert/* ]] || die "thing '$thing' has no certificate attached (got '$cert_arn'); pass --certificate-arn"
  fi
fi
run iot attach-policy --policy-name "$policy_name" --target "$cert_arn"

cat <<TXT

Done. Configure the component with:
  roleAlias: $alias
  bucket: $bucket
  prefix: "$prefix"
  region: $region
TXT
if [ "$mode" = keys ]; then
  echo "  keys: [...] or manifestKey: ...   (this role cannot list the bucket)"
fi
