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
		{"/srv/ds", "/mnt/ds", "-o", "sync"},
		{"/srv/ds", "/mnt/ds", "-o", "ro=1"},
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

// TestHelperGenericOptions: every filesystem-independent option mount(8)
// may pass is accepted; ro becomes --read-only, remount a remount.
func TestHelperGenericOptions(t *testing.T) {
	for _, c := range []struct {
		opts    string
		args    string
		remount bool
	}{
		{"defaults,nodiratime", "", false},
		{"diratime,lazytime,nolazytime,noatime,nostrictatime,strictatime,relatime,norelatime,atime", "", false},
		{"iversion,noiversion,mand,nomand,symfollow,nosymfollow,silent,loud,async,auto,noauto,nofail", "", false},
		{"user,nouser,users,owner,group,exec,noexec,suid,nosuid,dev,nodev,_netdev,comment=x,x-systemd.device-timeout=5", "", false},
		{"ro,config=/etc/c.toml", "--read-only --config /etc/c.toml", false},
		{"rw", "", false},
		{"remount,ro", "--read-only", true},
		{"remount,rw", "", true},
		{"rw,nosuid,nodev,relatime,user_id=0,group_id=0,default_permissions,allow_other,max_read=1048576,remount", "--allow-other", true},
	} {
		p, err := parseHelperArgs([]string{"/srv/ds", "/mnt/ds", "-o", c.opts})
		if err != nil {
			t.Errorf("-o %s: %v", c.opts, err)
			continue
		}
		if got := strings.Join(p.mountArgs, " "); got != c.args || p.remount != c.remount {
			t.Errorf("-o %s: mount args %q remount %v, want %q %v", c.opts, got, p.remount, c.args, c.remount)
		}
	}
}
