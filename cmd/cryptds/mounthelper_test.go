package main

import (
	"strings"
	"testing"
)

func TestParseHelperArgs(t *testing.T) {
	p, err := parseHelperArgs([]string{"/srv/ds", "/mnt/ds", "-n", "-t", "fuse.cryptds", "-o",
		"rw,nosuid,nodev,_netdev,x-systemd.automount,config=/etc/cryptds/ds.toml,allow_other,key_ttl=2h,log=/tmp/x.log"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.mountArgs, " "); got != "--config /etc/cryptds/ds.toml --allow-other --key-ttl 2h" {
		t.Errorf("mount args %q", got)
	}
	if p.source != "/srv/ds" || p.target != "/mnt/ds" || p.logFile != "/tmp/x.log" || p.fake {
		t.Errorf("plan %+v", p)
	}
	p, err = parseHelperArgs([]string{"/srv/ds", "/mnt/my/ds", "-f"})
	if err != nil || !p.fake || p.logFile != "/var/log/cryptds/mnt-my-ds.log" {
		t.Errorf("plan %+v, err %v", p, err)
	}
	for _, bad := range [][]string{
		{"/srv/ds"},
		{"/srv/ds", "/mnt/ds", "-o", "nope"},
		{"/srv/ds", "/mnt/ds", "-o", "ro"},
		{"/srv/ds", "/mnt/ds", "-o", "config"},
		{"/srv/ds", "/mnt/ds", "-o", "allow_other=1"},
		{"/srv/ds", "/mnt/ds", "-x"},
	} {
		if _, err := parseHelperArgs(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if _, err := parseHelperArgs([]string{"-s", "/srv/ds", "/mnt/ds", "-o", "nope"}); err != nil {
		t.Errorf("sloppy -s still refuses unknown options: %v", err)
	}
}
