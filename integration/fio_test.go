//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fioJob writes a job file: numjobs random writers with crc32c verify.
// fio writes every block of its file once (random map), then reads it all
// back and checks each block's checksum and header (offset, job).
// With verifyOnly it writes nothing and checks what an earlier identical
// run left (fio regenerates the same offsets and sizes from its seed).
func fioJob(t *testing.T, dir string, direct, verifyOnly bool) string {
	t.Helper()
	d, v := 0, 0
	if direct {
		d = 1
	}
	if verifyOnly {
		v = 1
	}
	job := fmt.Sprintf(`[global]
directory=%s
ioengine=libaio
iodepth=16
direct=%d
rw=randwrite
bsrange=4k-64k
size=64m
numjobs=3
verify=crc32c
do_verify=1
verify_fatal=1
verify_dump=0
fsync_on_close=1
group_reporting=0
verify_only=%d

[verify]
`, dir, d, v)
	p := filepath.Join(t.TempDir(), "verify.fio")
	if err := os.WriteFile(p, []byte(job), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// fioResult is the part of fio's JSON output the test checks.
type fioResult struct {
	Jobs []struct {
		Name  string `json:"jobname"`
		Error int    `json:"error"`
		Write struct {
			IOBytes int64 `json:"io_bytes"`
			BW      int64 `json:"bw"`
		} `json:"write"`
		Read struct {
			IOBytes int64 `json:"io_bytes"`
		} `json:"read"`
	} `json:"jobs"`
}

// TestFio drives the mount with fio: three parallel random-write jobs with
// crc32c verification, buffered and O_DIRECT (libaio, iodepth 16), on an
// encrypted VM dir and on a plain dir.
//
// After each run the datastore is remounted (no page cache left) and fio
// verifies every block again, this time read from the backing store.
func TestFio(t *testing.T) {
	require(t, haveCmd("fio"), "fio")
	for _, enc := range []bool{true, false} {
		for _, direct := range []bool{false, true} {
			name := fmt.Sprintf("%s/direct=%v", map[bool]string{true: "encrypted", false: "plain"}[enc], direct)
			t.Run(name, func(t *testing.T) {
				backing, mnt, m := kmsMount(t)
				vmName := strings.NewReplacer("/", "-", "=", "").Replace("vm-fio-" + name)
				dir := mkVMDir(t, mnt, vmName, enc)
				start := time.Now()
				out, code := runCode(10*time.Minute, "", nil, "fio", "--output-format=json", fioJob(t, dir, direct, false))
				elapsed := time.Since(start)
				if code != 0 {
					t.Fatalf("fio: exit %d\n%s", code, out)
				}
				// fio may print warnings before the JSON document.
				var res fioResult
				if i := strings.Index(out, "{"); i < 0 || json.Unmarshal([]byte(out[i:]), &res) != nil {
					t.Fatalf("fio output is not JSON:\n%s", out)
				}
				if len(res.Jobs) != 3 {
					t.Fatalf("fio ran %d jobs, want 3\n%s", len(res.Jobs), out)
				}
				var wrote, read, bw int64
				for _, j := range res.Jobs {
					if j.Error != 0 {
						t.Errorf("fio job %s: error %d", j.Name, j.Error)
					}
					wrote += j.Write.IOBytes
					read += j.Read.IOBytes
					bw += j.Write.BW
				}
				if wrote < 3*64<<20 || read < 3*64<<20 {
					t.Errorf("fio wrote %d and verified %d bytes, want at least %d each", wrote, read, 3*64<<20)
				}
				t.Logf("%v: wrote %d MiB at %d MiB/s, verified %d MiB", elapsed.Round(10*time.Millisecond), wrote>>20, bw>>10, read>>20)
				back := filepath.Join(backing, vmName)
				if enc {
					requireEncryptedBacking(t, back)
				} else {
					requirePlainBacking(t, back, nil)
				}
				m.stop()
				m = remount(t, backing, mnt)
				if out, code := runCode(10*time.Minute, "", nil, "fio", fioJob(t, dir, direct, true)); code != 0 {
					t.Errorf("fio verify_only after a remount: exit %d\n%s", code, out)
				}
			})
		}
	}
}
