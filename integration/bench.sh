#!/usr/bin/env bash
# make bench: the fio matrix on, in one interleaved run, the raw backing
# directory, a plain go-fuse loopback mount, gocryptfs and cryptds (an
# encrypted VM directory), then medians and ratios (integration/benchtable.py).
# Needs root, /dev/fuse, fio and gocryptfs. Run it on an otherwise idle
# machine: nothing else may run meanwhile.
#
#   ROUNDS=5 SIZE=512M RUNTIME=10 make bench
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SIZE=${SIZE:-512M}
RUNTIME=${RUNTIME:-10}
MODES=${MODES:-"buffered direct"}
FSES=${FSES:-"raw loopback gocryptfs cryptds"}
WORK=${BENCH_DIR:-/var/tmp/cryptds-bench}
OUT=${BENCH_OUT:-$WORK/results}

for t in fio gocryptfs python3; do command -v $t >/dev/null || { echo "bench needs $t" >&2; exit 1; }; done
mkdir -p bin
go build -o bin/cryptds ./cmd/cryptds
go build -o bin/loopback ./internal/tools/loopback

rm -rf "$WORK"; mkdir -p "$WORK" "$OUT"
pids=()
cleanup() {
	for m in "$WORK"/mnt-*; do mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }; done
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT

waitmount() { for _ in $(seq 200); do mountpoint -q "$1" && return 0; sleep 0.05; done; echo "mount $1 not ready" >&2; exit 1; }

# target dir per filesystem
declare -A DIR
mkdir -p "$WORK/raw"; DIR[raw]=$WORK/raw
mkdir -p "$WORK/back-loopback" "$WORK/mnt-loopback"
bin/loopback "$WORK/back-loopback" "$WORK/mnt-loopback" & pids+=($!)
waitmount "$WORK/mnt-loopback"; DIR[loopback]=$WORK/mnt-loopback
mkdir -p "$WORK/back-gocryptfs" "$WORK/mnt-gocryptfs"
gocryptfs -q -init -extpass "echo bench" -scryptn 10 "$WORK/back-gocryptfs" >/dev/null
gocryptfs -q -extpass "echo bench" "$WORK/back-gocryptfs" "$WORK/mnt-gocryptfs"
DIR[gocryptfs]=$WORK/mnt-gocryptfs
mkdir -p "$WORK/back-cryptds" "$WORK/mnt-cryptds" "$WORK/state"
bin/cryptds mount --dev --state-dir "$WORK/state" "$WORK/back-cryptds" "$WORK/mnt-cryptds" 2>"$WORK/cryptds.log" & pids+=($!)
cpid=$!
waitmount "$WORK/mnt-cryptds"
mkdir "$WORK/mnt-cryptds/vm"
setfattr -n user.cryptds.policy -v encrypted "$WORK/mnt-cryptds/vm"
DIR[cryptds]=$WORK/mnt-cryptds/vm

dropcaches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

job() { # fs mode name rw bs extra...
	local fs=$1 mode=$2 name=$3 rw=$4 bs=$5; shift 5
	local common=(--name="$name" --directory="${DIR[$fs]}" --filename="fio-$mode.dat" --size="$SIZE" --rw="$rw" --bs="$bs"
		--output-format=json --output="$OUT/$fs.$mode.$name.r$round.json")
	if [ "$mode" = direct ]; then common+=(--direct=1 --ioengine=libaio --iodepth=16); else common+=(--ioengine=psync --iodepth=1); fi
	fio "${common[@]}" "$@" >/dev/null
}

for round in $(seq "$ROUNDS"); do
	for mode in $MODES; do
		for fs in $FSES; do
			echo "round $round $mode $fs" >&2
			rm -f "${DIR[$fs]}/fio-$mode.dat"
			job "$fs" "$mode" seqwrite write 1M --end_fsync=1
			dropcaches
			job "$fs" "$mode" seqread read 1M
			job "$fs" "$mode" randwrite randwrite 4k --time_based --runtime="$RUNTIME" --norandommap
			dropcaches
			job "$fs" "$mode" randread randread 4k --time_based --runtime="$RUNTIME" --norandommap
			dropcaches
			job "$fs" "$mode" randrw70 randrw 4k --rwmixread=70 --time_based --runtime="$RUNTIME" --norandommap
			rm -f "${DIR[$fs]}/fio-$mode.dat"
		done
	done
done
echo "cryptds daemon peak RSS: $(grep VmHWM /proc/$cpid/status | awk '{print $2, $3}')" | tee "$OUT/rss.txt"
python3 integration/benchtable.py "$OUT"
