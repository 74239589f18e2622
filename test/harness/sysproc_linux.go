package harness

import "syscall"

// sysProcAttr puts a child in its own session. Pdeathsig kills it if the test process dies without
// running Stop (a crash, SIGKILL, a timed-out `go test`), so no control plane outlives its test.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
}
