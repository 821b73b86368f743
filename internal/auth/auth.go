// Package auth checks bearer tokens against a token file: one token per
// line (blank lines and lines starting with # are ignored), several at once
// so that tokens can be rotated. The file is read again when it changes;
// a file that is emptied, holds only comments, or disappears accepts no
// token at all (revocation must bite), and says so loudly in the log.
// Tokens are compared in constant time, by their SHA-256 digests.
package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// TokenFile is a set of accepted tokens loaded from a file.
type TokenFile struct {
	// Static after Load.
	path string
	log  *slog.Logger
	// reloadEvery bounds how often Check looks at the file's modification
	// time.
	reloadEvery time.Duration

	mu      sync.Mutex
	digests [][sha256.Size]byte // guarded by mu
	modTime time.Time           // guarded by mu
	checked time.Time           // guarded by mu
	missing bool                // guarded by mu: the file was gone at the last look
}

// Load reads path. It fails when the file cannot be read or holds no
// token. log (nil: discard) receives the file's changes: a reload, and, as
// errors, a file that no longer accepts any token.
func Load(path string, log *slog.Logger) (*TokenFile, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	f := &TokenFile{path: path, log: log, reloadEvery: time.Second}
	if err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// Reload reads the file now (SIGHUP), whether or not it changed.
func (f *TokenFile) Reload() error { return f.reload() }

// reload reads the file. When it holds no token the set becomes empty
// (no token is accepted) and the error says why.
func (f *TokenFile) reload() error {
	st, err := os.Stat(f.path)
	if err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	var digests [][sha256.Size]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		digests = append(digests, sha256.Sum256([]byte(line)))
	}
	f.mu.Lock()
	f.digests, f.modTime, f.checked, f.missing = digests, st.ModTime(), time.Now(), false
	f.mu.Unlock()
	if len(digests) == 0 {
		return errors.New("token file " + f.path + " holds no token")
	}
	return nil
}

// maybeReload rereads the file if it changed. A file that is gone, or
// holds no token, accepts no token from then on.
func (f *TokenFile) maybeReload() {
	f.mu.Lock()
	due := time.Since(f.checked) >= f.reloadEvery
	if due {
		f.checked = time.Now()
	}
	mod, missing := f.modTime, f.missing
	f.mu.Unlock()
	if !due {
		return
	}
	st, err := os.Stat(f.path)
	switch {
	case err != nil:
		if !missing {
			f.mu.Lock()
			f.digests, f.missing, f.modTime = nil, true, time.Time{}
			f.mu.Unlock()
			f.log.Error("token file is gone: no token is accepted until it is back", "path", f.path, "err", err)
		}
	case !st.ModTime().Equal(mod) || missing:
		if err := f.reload(); err != nil {
			f.log.Error("token file holds no token: no token is accepted until it does", "path", f.path, "err", err)
			return
		}
		f.mu.Lock()
		n := len(f.digests)
		f.mu.Unlock()
		f.log.Info("token file reloaded", "path", f.path, "tokens", n)
	}
}

// Check reports whether token is one of the file's tokens.
func (f *TokenFile) Check(token string) bool {
	f.maybeReload()
	d := sha256.Sum256([]byte(token))
	f.mu.Lock()
	digests := f.digests
	f.mu.Unlock()
	ok := 0
	for i := range digests {
		ok |= subtle.ConstantTimeCompare(d[:], digests[i][:])
	}
	return ok == 1 && token != ""
}

// Tokens returns how many tokens the file accepts now.
func (f *TokenFile) Tokens() int {
	f.maybeReload()
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.digests)
}

// BearerToken returns the token of an "Authorization: Bearer <token>"
// header value.
func BearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
