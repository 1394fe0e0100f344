package fs

import (
	"fmt"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux native AIO (io_submit), as QEMU's aio=native and fio's libaio
// engine use it: an O_DIRECT write submitted this way is an asynchronous
// kiocb, which FUSE sends through its async direct I/O path.

// iocb is struct iocb of linux/aio_abi.h (little endian).
type iocb struct {
	data      uint64
	key       uint32
	rwFlags   int32
	opcode    uint16
	reqprio   int16
	fd        uint32
	buf       uint64
	nbytes    uint64
	offset    int64
	reserved2 uint64
	flags     uint32
	resfd     uint32
}

// ioEvent is struct io_event.
type ioEvent struct {
	data, obj uint64
	res, res2 int64
}

const (
	iocbCmdPread  = 0
	iocbCmdPwrite = 1
)

// aioCtx is one io_setup context.
type aioCtx uintptr

func newAIO(nr int) (aioCtx, error) {
	var ctx aioCtx
	if _, _, e := syscall.Syscall(unix.SYS_IO_SETUP, uintptr(nr), uintptr(unsafe.Pointer(&ctx)), 0); e != 0 {
		return 0, fmt.Errorf("io_setup: %w", e)
	}
	return ctx, nil
}

func (c aioCtx) destroy() { syscall.Syscall(unix.SYS_IO_DESTROY, uintptr(c), 0, 0) }

// aioOp is one request of aioCtx.run.
type aioOp struct {
	write bool
	fd    int
	buf   []byte
	off   int64
}

// run submits ops at once and waits for all of them; it returns the first
// failure (a short transfer counts as one).
func (c aioCtx) run(ops []aioOp) error {
	cbs := make([]iocb, len(ops))
	ptrs := make([]*iocb, len(ops))
	for i, op := range ops {
		cbs[i] = iocb{data: uint64(i), opcode: iocbCmdPread, fd: uint32(op.fd),
			buf: uint64(uintptr(unsafe.Pointer(&op.buf[0]))), nbytes: uint64(len(op.buf)), offset: op.off}
		if op.write {
			cbs[i].opcode = iocbCmdPwrite
		}
		ptrs[i] = &cbs[i]
	}
	defer runtime.KeepAlive(ops)
	defer runtime.KeepAlive(cbs)
	n, _, e := syscall.Syscall(unix.SYS_IO_SUBMIT, uintptr(c), uintptr(len(ptrs)), uintptr(unsafe.Pointer(&ptrs[0])))
	if e != 0 {
		return fmt.Errorf("io_submit: %w", e)
	}
	if int(n) != len(ops) {
		return fmt.Errorf("io_submit: %d of %d submitted", n, len(ops))
	}
	events := make([]ioEvent, len(ops))
	var first error
	for done := 0; done < len(ops); {
		got, _, e := syscall.Syscall6(unix.SYS_IO_GETEVENTS, uintptr(c), 1, uintptr(len(ops)-done), uintptr(unsafe.Pointer(&events[0])), 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("io_getevents: %w", e)
		}
		for _, ev := range events[:got] {
			op := ops[ev.data]
			switch {
			case ev.res < 0 && first == nil:
				first = fmt.Errorf("aio at %d: %w", op.off, syscall.Errno(-ev.res))
			case ev.res >= 0 && int(ev.res) != len(op.buf) && first == nil:
				first = fmt.Errorf("aio at %d: %d of %d bytes", op.off, ev.res, len(op.buf))
			}
		}
		done += int(got)
	}
	return first
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		panic(err)
	}
	return b
}
