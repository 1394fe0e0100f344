#!/usr/bin/env bash
# make demo: a throw-away datastore, the in-process dev KMS, a mount, a VM
# encrypted in place, and its backing ciphertext next to the plaintext the
# mount shows. Needs root and /dev/fuse. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CRYPTDS_BIN:-$PWD/bin/cryptds}
[ -x "$BIN" ] || go build -o "$BIN" ./cmd/cryptds

if [ "$(id -u)" != 0 ] || [ ! -c /dev/fuse ]; then
	echo "make demo needs root and /dev/fuse (FUSE mounts)" >&2
	exit 1
fi

tmp=$(mktemp -d /tmp/cryptds-demo.XXXXXX)
ds=$tmp/datastore mnt=$tmp/mnt state=$tmp/state
mkdir -p "$ds" "$mnt" "$state"
pid=
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	mountpoint -q "$mnt" && umount -l "$mnt" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

# Bold step titles on a terminal only: piped into a file or a CI log,
# escape codes are noise.
if [ -t 1 ]; then
	step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
	step() { printf '\n== %s\n' "$*"; }
fi
show() { printf '$ %s\n' "$*"; "$@"; }

step "1. mount $ds at $mnt with the in-process dev KMS (NOT for production)"
"$BIN" mount --dev --state-dir "$state" "$ds" "$mnt" 2>"$tmp/mount.log" &
pid=$!
for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
mountpoint -q "$mnt" || { cat "$tmp/mount.log"; exit 1; }
echo "mounted (daemon pid $pid)"

step "2. a plain VM: config, a disk image with data, a log"
mkdir "$mnt/web01"
printf 'name = "web01"\nmemory = 2048\ndisk = "web01.qcow2"\nsecret = "TOP-SECRET-DEMO-CONFIG"\n' >"$mnt/web01/web01.conf"
if command -v qemu-img >/dev/null; then
	show qemu-img create -q -f qcow2 "$mnt/web01/web01.qcow2" 4G
	{ yes "TOP-SECRET-DEMO-DISK-DATA" || true; } | head -c 8M >"$tmp/pattern"
	show qemu-io -f qcow2 -c "write -q -P 0x5a 0 1M" "$mnt/web01/web01.qcow2"
	show qemu-img convert -q -f raw -O raw "$tmp/pattern" "$mnt/web01/data.raw"
else
	truncate -s 4G "$mnt/web01/web01-flat.raw"
	{ yes "TOP-SECRET-DEMO-DISK-DATA" || true; } | head -c 8M | dd of="$mnt/web01/web01-flat.raw" conv=notrunc status=none
fi
echo "2026-11-27 boot ok TOP-SECRET-DEMO-LOG" >"$mnt/web01/vmware.log"
show ls -ls "$mnt/web01"
echo "backing store before encryption (plaintext):"
show od -A d -c -N 64 "$ds/web01/web01.conf"

step "3. cryptds vm encrypt $mnt/web01"
"$BIN" vm encrypt "$mnt/web01"

step "4. the backing store now holds ciphertext ..."
# Block 0 of the data is stored at offset 4096 (after the header region) as
# a 16-byte nonce, then the ciphertext of the first plaintext bytes: the
# same 32 bytes, as the mount shows them and as they are stored.
echo "the first 32 bytes of web01.conf through the mount (plaintext):"
show od -A d -c -N 32 "$mnt/web01/web01.conf"
echo "the same 32 bytes as stored on the backing store (offset 4096 + 16-byte nonce):"
show od -A d -t x1 -j 4112 -N 32 "$ds/web01/web01.conf"
echo "(the first 4096 bytes of the backing file are the header region: magic, ids, wrapped key; no data)"
if grep -rq "TOP-SECRET" "$ds"; then echo "FAIL: plaintext found on the backing store" >&2; exit 1; fi
echo "(grep -r TOP-SECRET $ds: no match)"
"$BIN" inspect "$ds/web01/web01.conf"

step "5. ... while the mount shows the plaintext"
show cat "$mnt/web01/web01.conf"
show ls -ls "$mnt/web01"
echo "backing usage: $(du -sh "$ds/web01" | cut -f1) (holes stay holes)"

step "6. which VMs are encrypted?"
"$BIN" vm list "$mnt"

step "7. cryptds vm decrypt $mnt/web01 (back to the datastore default)"
"$BIN" vm decrypt "$mnt/web01"
"$BIN" vm list "$mnt"
show od -A d -c -N 64 "$ds/web01/web01.conf"

step "8. unmount"
"$BIN" umount "$mnt"
wait "$pid"
pid=
echo "done: everything under $tmp is removed"
