// Package childproc runs wsbridge binaries as child processes for the
// soak and scale-out tools: it starts them logging JSON, waits for a given
// log line (how a process says it is listening, and on which address), and
// kills or stops them.
package childproc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// Proc is a running child. Its stderr is read, line by line, by a goroutine
// that ends when the child closes stderr (it exits); Wait waits for it.
type Proc struct {
	cmd  *exec.Cmd
	logs chan map[string]any // owned by the reader goroutine, which closes it
}

// Start runs binary with args plus --log-format json.
func Start(binary string, args ...string) (*Proc, error) {
	cmd := exec.Command(binary, append(args, "--log-format", "json")...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{cmd: cmd, logs: make(chan map[string]any, 1000)}
	go func() {
		defer close(p.logs)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				select {
				case p.logs <- m:
				default: // nobody is waiting for logs now; drop
				}
			}
		}
	}()
	return p, nil
}

// WaitLog waits for a log line whose msg is msg and returns it.
func (p *Proc) WaitLog(ctx context.Context, msg string) (map[string]any, error) {
	for {
		select {
		case m, ok := <-p.logs:
			if !ok {
				return nil, fmt.Errorf("%s exited before logging %q", p.cmd.Path, msg)
			}
			if m["msg"] == msg {
				return m, nil
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("no log %q: %w", msg, ctx.Err())
		}
	}
}

// Pid is the child's process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Kill kills the child (SIGKILL) and waits for it.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	_ = p.Wait()
}

// Stop sends SIGTERM and waits for the child to exit.
func (p *Proc) Stop() error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return p.Wait()
}

// Wait waits for the child to exit and for its stderr to be read.
func (p *Proc) Wait() error {
	for range p.logs { // drain, so the reader goroutine ends
	}
	err := p.cmd.Wait()
	if p.cmd.ProcessState != nil && p.cmd.ProcessState.Exited() {
		return err
	}
	return nil // killed by a signal we sent
}
