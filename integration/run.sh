#!/usr/bin/env bash
# Runs the integration suites against real peers (a PyKMIP server, QEMU,
# backup tools, fio) through the real binary. Needs root and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -tags integration -count=1 -timeout 40m -v ./integration/... 2>&1 | tee /tmp/cryptds-integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)' || true
exit "${PIPESTATUS[0]}"
