#!/usr/bin/env bash
# build.sh OUTDIR: a tiny QEMU test guest — the Debian cloud kernel's vmlinuz
# plus a busybox initramfs whose /init writes and/or verifies a seed pattern
# on /dev/vda (integration/guest_test.go drives it). Nothing is installed: the
# kernel and busybox-static .debs are fetched with `apt-get download` and
# unpacked with dpkg-deb. The result is cached under
# ${CRYPTDS_GUEST_CACHE:-/var/tmp/cryptds-guest}/<kernel package> and copied
# (hard-linked when possible) to OUTDIR/vmlinuz and OUTDIR/initrd.gz.
#
# Kernel command line parameters read by /init:
#   t.mode=write|verify|both|hold   t.seed=STRING   t.fill=MiB (hold only)
# /init prints "T-RESULT: OK ..." or "T-RESULT: FAIL ...", then powers off;
# in hold mode it prints "T-READY" and then "T-TICK n" every second forever.
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
cache=${CRYPTDS_GUEST_CACHE:-/var/tmp/cryptds-guest}
mkdir -p "$out" "$cache"

pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$pkg" ] || { echo "build.sh: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
dest=$cache/$pkg
# Bump when /init or the layout changes so stale caches are rebuilt.
version=3

# Concurrent test runs share the cache: one builds, the others wait.
exec 9>"$cache/.lock"
flock 9
if [ ! -f "$dest/done" ] || [ "$(cat "$dest/done")" != "$version" ]; then
	work=$(mktemp -d "$cache/build.XXXXXX")
	trap 'rm -rf "$work"' EXIT
	(cd "$work" && apt-get download -q "$pkg" busybox-static >/dev/null 2>"$work/apt.log") ||
		{ cat "$work/apt.log" >&2; exit 1; }
	dpkg-deb -x "$work"/"$pkg"_*.deb "$work/k"
	dpkg-deb -x "$work"/busybox-static_*.deb "$work/bb"
	kver=${pkg#linux-image-}
	root=$work/root
	mkdir -p "$root"/{bin,proc,sys,dev,lib/modules}
	cp "$work/bb/bin/busybox" "$root/bin/busybox"
	mods="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk"
	for m in $mods; do
		f=$(find "$work/k/lib/modules/$kver" -name "$m.ko" -print -quit)
		[ -n "$f" ] || { echo "build.sh: module $m.ko not in $pkg" >&2; exit 1; }
		cp "$f" "$root/lib/modules/"
	done
	cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
	insmod /lib/modules/$m.ko || echo "T-INSMOD-FAIL $m"
done
mode=both; seed=CRYPTDS-GUEST-SEED; fill=0
for a in $(cat /proc/cmdline); do
	case $a in
	t.mode=*) mode=${a#t.mode=} ;;
	t.seed=*) seed=${a#t.seed=} ;;
	t.fill=*) fill=${a#t.fill=} ;;
	esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
result() { echo "T-RESULT: $*"; }
if [ ! -b /dev/vda ]; then
	result "FAIL no /dev/vda"
else
	yes "$seed" | head -c 4194304 >/pat
	want=$(sha256sum </pat | cut -d' ' -f1)
	ok=1
	if [ "$mode" = write ] || [ "$mode" = both ]; then
		dd if=/pat of=/dev/vda bs=1M conv=fsync 2>/dev/null || ok=0
		sync
		echo "T-WROTE $want"
	fi
	echo 3 >/proc/sys/vm/drop_caches
	got=$(dd if=/dev/vda bs=1M count=4 2>/dev/null | sha256sum | cut -d' ' -f1)
	if [ "$mode" = write ]; then
		[ "$got" = "$want" ] || ok=0
	elif [ "$got" != "$want" ]; then
		ok=0
	fi
	if [ $ok = 1 ]; then result "OK mode=$mode sha256=$got"; else result "FAIL mode=$mode got=$got want=$want"; fi
fi
if [ "$mode" = hold ]; then
	[ "$fill" -gt 0 ] && mkdir -p /fill && mount -t tmpfs -o size=$((fill + 8))m tmpfs /fill &&
		dd if=/dev/urandom of=/fill/r bs=1M count=$fill 2>/dev/null
	echo T-READY
	n=0
	while :; do n=$((n + 1)); echo "T-TICK $n"; sleep 1; done
fi
sync
poweroff -f
INIT
	chmod 755 "$root/init"
	(cd "$root" && find . | "$work/bb/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.gz"
	mkdir -p "$dest.new"
	cp "$work/k/boot/vmlinuz-$kver" "$dest.new/vmlinuz"
	mv "$work/initrd.gz" "$dest.new/initrd.gz"
	echo "$version" >"$dest.new/done"
	rm -rf "$dest"
	mv "$dest.new" "$dest"
fi
for f in vmlinuz initrd.gz; do
	ln -f "$dest/$f" "$out/$f" 2>/dev/null || cp "$dest/$f" "$out/$f"
done
echo "$pkg"
