#!/usr/bin/env bash
# Copies this host's finished closetrace traces to S3 under one prefix per host:
#   s3://BUCKET/PREFIX/HOST/closetrace-DATE.jsonl.gz
# Run it on each host (by hand, or across a fleet with SSM Run Command: deploy/README.md).
# Needs the AWS CLI and an instance role allowed s3:PutObject on the destination.
#
# Usage: collect-to-s3.sh s3://BUCKET/PREFIX [TRACE_DIR]   (TRACE_DIR: /var/log/closetrace)
# A trace still being recorded (its last line is not the summary) is left for the next run.
set -euo pipefail

usage="usage: collect-to-s3.sh s3://BUCKET/PREFIX [TRACE_DIR]"
destination=${1:?$usage}
trace_dir=${2:-/var/log/closetrace}
if [[ $destination != s3://?* ]]; then
  echo "collect-to-s3.sh: the destination must be an s3:// URL; $usage" >&2
  exit 2
fi
destination=${destination%/}
# The trace header names the host too; the key keeps traces of many hosts apart.
host=$(hostname)

shopt -s nullglob
traces=("$trace_dir"/*.jsonl)
if ((${#traces[@]} == 0)); then
  echo "collect-to-s3.sh: no traces in $trace_dir" >&2
  exit 1
fi

copied=0
for trace in "${traces[@]}"; do
  if ! tail -n 1 "$trace" | grep -q '"type":"summary"'; then
    echo "collect-to-s3.sh: skipping $trace: still being recorded (no summary line yet)" >&2
    continue
  fi
  # JSON Lines compress about tenfold; gunzip before `closetrace report`.
  key="$destination/$host/$(basename "$trace").gz"
  gzip -c "$trace" | aws s3 cp - "$key" --content-type application/gzip
  echo "collect-to-s3.sh: $trace -> $key"
  copied=$((copied + 1))
done
echo "collect-to-s3.sh: $copied trace(s) copied"
