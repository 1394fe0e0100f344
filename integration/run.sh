#!/usr/bin/env bash
# make integration: the suites that need real peers, run as root with
# /dev/fuse. Starts PyKMIP with the project's script, runs the KMIP client
# suite against it, then the end-to-end suites through the real binary
# mounted against PyKMIP, and checks that no mount, process or temp dir is
# left behind. In CI (CI set) a missing prerequisite fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${CRYPTDS_IT_LOG:-/tmp/cryptds-integration.log}
: >"$LOG"

fail() { echo "integration: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] && [ -c /dev/fuse ] || fail "needs root and /dev/fuse"
for t in pykmip-server openssl setfattr qemu-img qemu-io qemu-system-x86_64 apt-get dpkg-deb fio tar rsync restic stress-ng; do
	command -v "$t" >/dev/null || fail "missing $t (bash .ci/run installs it)"
done

mkdir -p bin
go build -o bin/cryptds ./cmd/cryptds
export CRYPTDS_BIN=$PWD/bin/cryptds

pkdir=$(mktemp -d /tmp/cryptds-pykmip.XXXXXX)
cleanup() {
	integration/pykmip.sh stop "$pkdir" >/dev/null 2>&1 || true
	rm -rf "$pkdir"
}
trap cleanup EXIT

# gotest PKG...: go test with its verbose log kept in $LOG and only the
# verdict lines shown.
gotest() {
	set +e
	go test -tags integration -count=1 -timeout 40m -v "$@" 2>&1 | tee -a "$LOG" |
		grep -E '^(=== RUN|\s*--- (PASS|FAIL|SKIP)|PASS|FAIL|ok |panic:)'
	local rc=${PIPESTATUS[0]}
	set -e
	return "$rc"
}

echo "== KMIP client suite against PyKMIP (started by its own test)"
gotest ./kmipclient/

echo "== end-to-end suites (PyKMIP on 127.0.0.1:5697)"
integration/pykmip.sh start "$pkdir" 5697
export CRYPTDS_PYKMIP_DIR=$pkdir
gotest ./integration/

echo "== leftovers"
if grep -q ' cryptds:' /proc/self/mountinfo; then fail "cryptds mounts left behind: $(grep ' cryptds:' /proc/self/mountinfo)"; fi
if pgrep -f "$CRYPTDS_BIN mount" >/dev/null; then fail "cryptds daemons left behind: $(pgrep -af "$CRYPTDS_BIN mount")"; fi
echo "no mounts or daemons left behind"
