#!/usr/bin/env bash
# Metadata-heavy work through an encrypted VM directory, for comparing two
# builds (every create and open asks the mount's VM record and checks where
# the object lives): mounts a fresh datastore with the dev KMS, then times
# creating N files of 4 KiB, reading them back, stat'ing them and
# removing them. Prints one line: create_s read_s stat_s remove_s.
# Needs root and /dev/fuse. Nothing else may run meanwhile.
#
#   BIN=bin/cryptds N=2000 integration/bench-metadata.sh
set -euo pipefail
BIN=${BIN:-bin/cryptds}
N=${N:-2000}
work=$(mktemp -d /var/tmp/cryptds-metabench.XXXXXX)
cleanup() {
	mountpoint -q "$work/mnt" && { "$BIN" umount "$work/mnt" >/dev/null 2>&1 || umount -l "$work/mnt"; }
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/ds" "$work/mnt" "$work/state"
"$BIN" mount --dev --state-dir "$work/state" "$work/ds" "$work/mnt" 2>"$work/log" &
for _ in $(seq 300); do mountpoint -q "$work/mnt" && break; sleep 0.05; done
mountpoint -q "$work/mnt" || { cat "$work/log" >&2; exit 1; }
vm=$work/mnt/vm
mkdir "$vm"
setfattr -n user.cryptds.policy -v encrypted "$vm"
head -c 4096 /dev/urandom >"$work/blk"
now() { date +%s.%N; }
t0=$(now)
for i in $(seq "$N"); do cp "$work/blk" "$vm/f$i"; done
t1=$(now)
cat "$vm"/f* >/dev/null
t2=$(now)
ls -l "$vm" >/dev/null
t3=$(now)
rm -f "$vm"/f*
t4=$(now)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v e="$t4" 'BEGIN { printf "%.3f %.3f %.3f %.3f\n", b-a, c-b, d-c, e-d }' 
