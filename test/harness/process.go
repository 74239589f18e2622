package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is one control-plane binary running in its own session, logging to a file.
type process struct {
	name    string
	args    []string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has exited
	err     error         // its exit status, valid after exited
}

// startProcess runs bin/name in its own session (setsid), so that signals meant for the test's
// process group do not reach it and it is stopped only by PID (see sysProcAttr).
func startProcess(binDir, runDir, name string, args ...string) (*process, error) {
	p := &process{name: name, args: args, logPath: filepath.Join(runDir, name+".log"), exited: make(chan struct{})}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	p.cmd = exec.Command(filepath.Join(binDir, name), args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = sysProcAttr()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	return p, nil
}

// running is nil while the process runs, else an error with the end of its log.
func (p *process) running() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited (%v); last log lines:\n%s", p.name, p.err, p.logTail(15))
	default:
		return nil
	}
}

// stop sends SIGTERM and, after grace, SIGKILL, then waits for the exit. Only this PID is signalled.
func (p *process) stop(grace time.Duration) {
	if p.running() != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// peakRSS is the process's high-water resident memory in bytes (VmHWM), 0 if unknown.
func (p *process) peakRSS() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func (p *process) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ChildProcAttr is the SysProcAttr the harness gives its own processes, for other processes a test
// or benchmark starts (the controller binary): its own session, and killed with the caller.
func ChildProcAttr() *syscall.SysProcAttr { return sysProcAttr() }
