//go:build !linux

package harness

import "syscall"

// sysProcAttr puts a child in its own session. Without Pdeathsig (Linux only) a control plane can
// outlive a test process that dies without running Stop.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }
