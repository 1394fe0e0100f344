#!/usr/bin/env bash
# make libvirt-test: libvirt runs a VM whose disk lives in a `dir` storage
# pool on an encrypted cryptds mount.
#
# Starts virtlogd, virtlockd and libvirtd itself (no systemd needed) unless a
# libvirtd is already running, and stops only what it started. Steps:
#   mount cryptds (--dev KMS, --allow-other) and make an encrypted VM dir;
#   define + start a dir pool on it; vol-create-as a qcow2;
#   TCG guest (integration/guest/build.sh) writes its pattern, shuts off;
#   a second boot verifies it (T-RESULT: OK); the backing file holds no
#   trace of the pattern (the plaintext view does);
#   a third boot holds: QEMU runs as libvirt-qemu, `nobody` is refused,
#   snapshot-create-as / snapshot-revert, save / restore on the pool work.
# Prints the tier's wall time. In CI (CI set) a missing tool is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
say() { echo "libvirt-test [$(( $(date +%s) - t0 ))s]: $*"; }
fail() { echo "libvirt-test: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] && [ -c /dev/fuse ] || fail "needs root and /dev/fuse"
for c in virsh libvirtd virtlogd virtlockd qemu-system-x86_64 qemu-img setfattr; do
	command -v "$c" >/dev/null || fail "missing $c (bash .ci/run installs libvirt-daemon-system)"
done
id libvirt-qemu >/dev/null 2>&1 || fail "no libvirt-qemu user (install libvirt-daemon-system, not just libvirt-daemon)"

mkdir -p bin
go build -o bin/cryptds ./cmd/cryptds
W=$(mktemp -d /tmp/cryptds-libvirt.XXXXXX)
chmod 0755 "$W" # libvirt-qemu must reach the mount, kernel and initrd
name=cryptds-lv-$$
pool=cryptds-lv-pool-$$
seed=CRYPTDS-LIBVIRT-SEED-$$
uuid=$(cat /proc/sys/kernel/random/uuid) # redefinitions must keep it
V="virsh -q -c qemu:///system"
started=() # pid files of the daemons we started
cryptds_pid=

cleanup() {
	set +e
	$V destroy "$name" >/dev/null 2>&1
	$V undefine "$name" --snapshots-metadata >/dev/null 2>&1
	$V pool-destroy "$pool" >/dev/null 2>&1
	$V pool-undefine "$pool" >/dev/null 2>&1
	for pf in "${started[@]}"; do
		[ -f "$pf" ] && kill "$(cat "$pf")" 2>/dev/null
	done
	if [ -n "$cryptds_pid" ]; then
		kill -TERM "$cryptds_pid" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$cryptds_pid" 2>/dev/null || break; sleep 0.1; done
	fi
	for pf in "${started[@]}"; do
		for _ in $(seq 50); do [ -f "$pf" ] && kill -0 "$(cat "$pf")" 2>/dev/null || break; sleep 0.1; done
	done
	mountpoint -q "$W/mnt" && umount -l "$W/mnt"
	rm -rf "$W"
}
trap cleanup EXIT

say "building the test guest"
bash integration/guest/build.sh "$W/guest" >/dev/null
chmod 0644 "$W/guest/vmlinuz" "$W/guest/initrd.gz"

say "mounting cryptds (dev KMS, allow_other)"
mkdir -p "$W/backing" "$W/mnt" "$W/state"
bin/cryptds mount --dev --state-dir "$W/state" --allow-other "$W/backing" "$W/mnt" >"$W/cryptds.log" 2>&1 &
cryptds_pid=$!
for _ in $(seq 300); do mountpoint -q "$W/mnt" && break; kill -0 $cryptds_pid 2>/dev/null || { cat "$W/cryptds.log"; fail "cryptds mount died"; }; sleep 0.1; done
mountpoint -q "$W/mnt" || fail "mount not ready"
mkdir "$W/mnt/vm"
setfattr -n user.cryptds.policy -v encrypted "$W/mnt/vm"

if pgrep -x libvirtd >/dev/null; then
	say "using the libvirtd already running"
else
	say "starting virtlogd, virtlockd, libvirtd"
	virtlogd -d -p "$W/virtlogd.pid" && started+=("$W/virtlogd.pid")
	virtlockd -d -p "$W/virtlockd.pid" && started+=("$W/virtlockd.pid")
	libvirtd -d -p "$W/libvirtd.pid" && started+=("$W/libvirtd.pid")
fi
for _ in $(seq 100); do $V version >/dev/null 2>&1 && break; sleep 0.2; done
$V version >/dev/null || fail "libvirtd does not answer on qemu:///system"

say "dir pool on the encrypted VM directory, qcow2 volume"
$V pool-define-as "$pool" dir --target "$W/mnt/vm" >/dev/null
$V pool-start "$pool" >/dev/null
$V vol-create-as "$pool" disk.qcow2 64M --format qcow2 >/dev/null
disk=$($V vol-path --pool "$pool" disk.qcow2)
[ "$disk" = "$W/mnt/vm/disk.qcow2" ] || fail "volume path $disk"
bin/cryptds inspect "$W/backing/vm/disk.qcow2" >/dev/null || fail "the volume's backing file is not encrypted"

# domain MODE SERIALLOG: define the domain with /init mode MODE.
domain() {
	cat >"$W/dom.xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <uuid>$uuid</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$W/guest/vmlinuz</kernel>
    <initrd>$W/guest/initrd.gz</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet t.mode=$1 t.seed=$seed</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source pool='$pool' volume='disk.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='$2' append='on'/><target port='0'/></serial>
    <console type='file'><source path='$2' append='on'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
XML
	$V define "$W/dom.xml" >/dev/null
}

# boot MODE: start the domain, wait until it shuts itself off, check its result.
boot() {
	local log=$W/serial-$1.log
	domain "$1" "$log"
	$V start "$name" >/dev/null
	for _ in $(seq 240); do
		[ "$($V domstate "$name")" = "shut off" ] && break
		sleep 0.5
	done
	[ "$($V domstate "$name")" = "shut off" ] || fail "guest ($1) did not power off: $(tail -c 600 "$log")"
	grep -aq "T-RESULT: OK mode=$1" "$log" || fail "guest ($1): $(grep -a T-RESULT "$log" || tail -c 600 "$log")"
}

say "boot 1: guest writes its pattern"
boot write
say "boot 2: guest verifies it"
boot verify
# The pattern is in the plaintext view and nowhere in the backing store.
grep -aqF "$seed" "$W/mnt/vm/disk.qcow2" || fail "positive control: pattern not visible through the mount"
if grep -raqF "$seed" "$W/backing"; then fail "pattern found in the backing store"; fi
say "pattern readable through the mount, absent from the backing store"

say "boot 3: running guest — access control, snapshot, save/restore"
domain hold "$W/serial-hold.log"
$V start "$name" >/dev/null
for _ in $(seq 120); do grep -aq T-READY "$W/serial-hold.log" 2>/dev/null && break; sleep 0.5; done
grep -aq T-READY "$W/serial-hold.log" || fail "hold guest not ready: $(tail -c 600 "$W/serial-hold.log")"
qpid=$(pgrep -f "qemu-system-x86_64 .*guest=$name" | head -1)
[ -n "$qpid" ] || fail "no QEMU process for $name"
quser=$(ps -o user= -p "$qpid")
[ "$quser" = libvirt-qemu ] || fail "QEMU runs as $quser, want libvirt-qemu"
if out=$(su nobody -s /bin/sh -c "cat '$W/mnt/vm/disk.qcow2'" 2>&1 >/dev/null); then
	fail "user nobody could read the disk"
fi
case $out in *"Permission denied"*) ;; *) fail "nobody: unexpected error: $out" ;; esac
say "QEMU runs as libvirt-qemu; nobody is refused ($out)"

$V snapshot-create-as "$name" s1 >/dev/null
$V snapshot-revert "$name" s1 >/dev/null
[ "$($V domstate "$name")" = running ] || fail "not running after snapshot-revert"
say "snapshot-create-as / snapshot-revert OK"

ticks_before=$(grep -ac T-TICK "$W/serial-hold.log")
$V save "$name" "$W/mnt/vm/$name.save" >/dev/null
[ "$($V domstate "$name")" = "shut off" ] || fail "not shut off after save"
bin/cryptds inspect "$W/backing/vm/$name.save" >/dev/null || fail "save file not encrypted on the backing store"
$V restore "$W/mnt/vm/$name.save" >/dev/null
[ "$($V domstate "$name")" = running ] || fail "not running after restore"
sleep 3
[ "$(grep -ac T-TICK "$W/serial-hold.log")" -gt "$ticks_before" ] || fail "restored guest does not tick"
say "save / restore on the encrypted pool OK"
$V destroy "$name" >/dev/null
qemu-img check -q "$W/mnt/vm/disk.qcow2" || fail "qemu-img check"

say "PASS in $(( $(date +%s) - t0 ))s"
