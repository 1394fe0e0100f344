#!/usr/bin/env bash
# make integration: the suites that need real peers, run as root with
# /dev/fuse. Starts PyKMIP with the project's script, runs the KMIP client
# suite against it, then the end-to-end suites through the real binary
# mounted against PyKMIP, and checks that no mount, process or temp dir of
# this run is left behind. In CI (CI set) a missing prerequisite fails the
# run.
#
# Everything of one run lives in its own directory (temp dirs, the binary,
# PyKMIP's state on a free port), so the leftover check looks only at what
# this run made: a host's own cryptds mounts, or a concurrent run, never
# fail it. To prove that, an unrelated cryptds datastore is mounted before
# the suites and must still be mounted, untouched, after them.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "integration: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] && [ -c /dev/fuse ] || fail "needs root and /dev/fuse"
for t in pykmip-server openssl python3 setfattr qemu-img qemu-io qemu-system-x86_64 apt-get dpkg-deb fio tar rsync restic stress-ng; do
	command -v "$t" >/dev/null || fail "missing $t (make deps installs it)"
done

run=$(mktemp -d /tmp/cryptds-it.XXXXXX)
logdir=$(mktemp -d /tmp/cryptds-it-log.XXXXXX) # kept: the verbose log
LOG=${CRYPTDS_IT_LOG:-$logdir/integration.log}
: >"$LOG"
mkdir -p "$run/tmp" "$run/pykmip"
other=$(mktemp -d /tmp/cryptds-unrelated.XXXXXX) # the unrelated datastore
other_pid=

# ours: the mount points of this run's mounts (a cryptds source or a mount
# point under $run).
ours() {
	awk -v run="$run" '{ split($0, lr, " - "); split(lr[2], f, " ");
		if (f[2] ~ "^cryptds:" run "/" || index($5, run "/") == 1) print $5 }' /proc/self/mountinfo
}

cleanup() {
	set +e
	integration/pykmip.sh stop "$run/pykmip" >/dev/null 2>&1
	for p in $(ours); do umount -l "$p"; done # never rm -rf through a mount
	if [ -n "$other_pid" ] && kill -0 "$other_pid" 2>/dev/null; then
		kill -TERM "$other_pid"
		for _ in $(seq 100); do kill -0 "$other_pid" 2>/dev/null || break; sleep 0.1; done
	fi
	mountpoint -q "$other/mnt" && umount -l "$other/mnt"
	rm -rf "$run" "$other"
}
trap cleanup EXIT

# This run's binary has a path of its own, so pgrep finds only its daemons.
go build -o "$run/cryptds" ./cmd/cryptds
export CRYPTDS_BIN=$run/cryptds
# t.TempDir() and every mount the tests make land under $run/tmp.
export TMPDIR=$run/tmp

echo "== an unrelated cryptds mount, as on a hypervisor with a live datastore ($other/mnt)"
mkdir -p "$other/ds" "$other/mnt" "$other/state"
cp "$run/cryptds" "$other/cryptds"
"$other/cryptds" mount --dev --state-dir "$other/state" "$other/ds" "$other/mnt" >"$other/mount.log" 2>&1 &
other_pid=$!
for _ in $(seq 300); do mountpoint -q "$other/mnt" && break; kill -0 "$other_pid" 2>/dev/null || break; sleep 0.1; done
mountpoint -q "$other/mnt" || { cat "$other/mount.log" >&2; fail "the unrelated mount did not come up"; }
echo "unrelated data" >"$other/mnt/keep"

# gotest PKG...: go test with its verbose log kept in $LOG and only the
# verdict lines shown. CRYPTDS_IT_RUN (a go test -run pattern) selects
# tests, for a quick run of a few.
gotest() {
	set +e
	go test -tags integration -count=1 -timeout 40m -v ${CRYPTDS_IT_RUN:+-run "$CRYPTDS_IT_RUN"} "$@" 2>&1 | tee -a "$LOG" |
		grep -E '^(=== RUN|\s*--- (PASS|FAIL|SKIP)|PASS|FAIL|ok |panic:)'
	local rc=${PIPESTATUS[0]}
	set -e
	return "$rc"
}

echo "== KMIP client suite against PyKMIP (started by its own test)"
gotest ./kmipclient/

integration/pykmip.sh start "$run/pykmip"
echo "== end-to-end suites (PyKMIP on $(cat "$run/pykmip/endpoint"))"
export CRYPTDS_PYKMIP_DIR=$run/pykmip
gotest ./integration/

echo "== leftovers of this run"
left=$(ours)
[ -z "$left" ] || fail "mounts left behind: $left"
if pgrep -f "^$CRYPTDS_BIN mount" >/dev/null; then fail "cryptds daemons left behind: $(pgrep -af "^$CRYPTDS_BIN mount")"; fi
echo "no mounts or daemons of this run left behind"

echo "== the unrelated mount is still there, untouched"
mountpoint -q "$other/mnt" || fail "the unrelated mount $other/mnt is gone"
[ "$(cat "$other/mnt/keep")" = "unrelated data" ] || fail "the unrelated mount's file changed"
"$other/cryptds" umount "$other/mnt"
wait "$other_pid" || fail "the unrelated mount's daemon exited with $?"
other_pid=
echo "unmounted it; log: $LOG"
