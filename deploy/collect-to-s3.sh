#!/usr/bin/env bash
# Copies this host's closed closetrace traces to S3 under one prefix per host, each once:
#   s3://BUCKET/PREFIX/HOST/closetrace-DATE[-N].jsonl.gz
# Run it on each host, by hand, from cron or a systemd timer, or across a fleet with SSM Run
# Command (deploy/README.md). Needs the AWS CLI and an instance role allowed s3:PutObject on the
# destination.
#
# Usage: collect-to-s3.sh s3://BUCKET/PREFIX [TRACE_DIR]   (TRACE_DIR: /var/log/closetrace)
#
# What it copies: every trace file but those being written, i.e. a rotating recorder's live file
# (closetrace-….live.jsonl) and a single-file recording whose recorder still holds its lock. A
# trace closed without its summary (a recorder that died) is copied too: it is readable. What
# was copied where is remembered in TRACE_DIR/.collected-to-s3, so that each file goes once to a
# destination however often this runs; a file compressed since it was copied is the same file.
# Each file is read through one descriptor opened once, so that retention or compression by the
# recorder meanwhile cannot change what is copied. Runs on one directory wait for each other.
# Exits 0 when there is nothing new to copy, also where no recorder has made TRACE_DIR yet.
set -euo pipefail

usage="usage: collect-to-s3.sh s3://BUCKET/PREFIX [TRACE_DIR]"
destination=${1:?$usage}
trace_dir=${2:-/var/log/closetrace}
if [[ $destination != s3://?* ]]; then
  echo "collect-to-s3.sh: the destination must be an s3:// URL; $usage" >&2
  exit 2
fi
if [[ ! -e $trace_dir ]]; then
  echo "collect-to-s3.sh: no $trace_dir yet (no recorder has written there): nothing to copy"
  exit 0
fi
if [[ ! -d $trace_dir ]]; then
  echo "collect-to-s3.sh: $trace_dir is not a directory;" \
    "give the directory closetrace record writes to" >&2
  exit 2
fi
destination=${destination%/}
# The trace header names the host too; the key keeps traces of many hosts apart.
host=$(hostname)
collected="$trace_dir/.collected-to-s3"
touch "$collected"
# One run at a time (cron beside SSM would copy every file twice); a later run copies what a
# run still going leaves. Not on $collected, which is replaced below, nor on the directory,
# which a rotating recorder holds.
exec {run_lock}>>"$trace_dir/.collect-to-s3.lock"
if ! flock --nonblock "$run_lock"; then
  echo "collect-to-s3.sh: another run is copying from $trace_dir; nothing done"
  exit 0
fi

# Is the file (by its name without .gz) recorded as copied to this destination?
already_copied() {
  grep -qxF "$destination $1" "$collected"
}

shopt -s nullglob
copied=0
for trace in "$trace_dir"/closetrace-*.jsonl "$trace_dir"/closetrace-*.jsonl.gz; do
  name=$(basename "$trace")
  name=${name%.gz}
  if already_copied "$name"; then
    continue
  fi
  if [[ $name == *.live.jsonl ]]; then
    # Not probed with the directory's lock: that would make a recorder starting now fail.
    echo "collect-to-s3.sh: skipping $trace: being written (if its recorder died, the next one" \
      "started on $trace_dir closes it, and a later run copies it)"
    continue
  fi
  # Opened once: gone since listed (retention, or compressed into its .gz) is nothing to copy.
  # (A failed redirection of exec ends a POSIX-mode shell; bash as run here goes on.)
  if ! exec {file}<"$trace"; then
    continue
  fi 2>/dev/null
  if [[ $trace == *.jsonl ]] && ! flock --nonblock "$file"; then
    echo "collect-to-s3.sh: skipping $trace: still being recorded" >&2
    exec {file}<&-
    continue
  fi
  if [[ ! -s /dev/fd/$file ]]; then
    echo "collect-to-s3.sh: skipping $trace: empty" >&2
    exec {file}<&-
    continue
  fi
  key="$destination/$host/$name.gz"
  # JSON Lines compress about tenfold; closetrace reads .jsonl.gz as it is.
  if [[ $trace == *.gz ]]; then
    aws s3 cp - "$key" --content-type application/gzip <&"$file"
  else
    gzip -c <&"$file" | aws s3 cp - "$key" --content-type application/gzip
  fi
  exec {file}<&-
  echo "$destination $name" >> "$collected"
  echo "collect-to-s3.sh: $trace -> $key"
  copied=$((copied + 1))
done

# Forget files retention has deleted since: the record stays as small as the directory.
remaining=$(mktemp "$trace_dir/.collected-to-s3.XXXXXX")
while read -r copied_to copied_name; do
  if [[ -e $trace_dir/$copied_name || -e $trace_dir/$copied_name.gz ]]; then
    echo "$copied_to $copied_name"
  fi
done < "$collected" > "$remaining"
mv "$remaining" "$collected"

echo "collect-to-s3.sh: $copied trace(s) copied from $trace_dir"
