// Command loopback is the benchmark baseline: go-fuse's plain loopback
// filesystem with the same mount options cryptds uses (1 MiB writes, no
// kernel passthrough, async direct I/O), so the ratio to it isolates what
// encryption costs.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: loopback BACKING MOUNTPOINT")
		os.Exit(2)
	}
	root, err := fs.NewLoopbackRoot(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv, err := fs.Mount(os.Args[2], root, &fs.Options{MountOptions: fuse.MountOptions{
		DirectMount:          true,
		MaxWrite:             1 << 20,
		FsName:               "loopback:" + os.Args[1],
		Name:                 "loopback",
		DisabledCapabilities: fuse.CAP_PASSTHROUGH,
		ExtraCapabilities:    fuse.CAP_ASYNC_DIO,
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; _ = srv.Unmount() }()
	srv.Wait()
}
