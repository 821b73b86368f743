// Package auth checks bearer tokens against a token file: one token per
// line (blank lines and lines starting with # are ignored), several at once
// so that tokens can be rotated. The file is read again when it changes.
// Tokens are compared in constant time, by their SHA-256 digests.
package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// TokenFile is a set of accepted tokens loaded from a file.
type TokenFile struct {
	path string
	// reloadEvery bounds how often Check looks at the file's modification
	// time.
	reloadEvery time.Duration

	mu      sync.Mutex
	digests [][sha256.Size]byte // guarded by mu
	modTime time.Time           // guarded by mu
	checked time.Time           // guarded by mu
}

// Load reads path. It fails when the file cannot be read or holds no token.
func Load(path string) (*TokenFile, error) {
	f := &TokenFile{path: path, reloadEvery: time.Second}
	if err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

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
	if len(digests) == 0 {
		return errors.New("token file " + f.path + " holds no token")
	}
	f.mu.Lock()
	f.digests, f.modTime, f.checked = digests, st.ModTime(), time.Now()
	f.mu.Unlock()
	return nil
}

// maybeReload rereads the file if it changed; a file that became unreadable
// or empty keeps the last good tokens.
func (f *TokenFile) maybeReload() {
	f.mu.Lock()
	due := time.Since(f.checked) >= f.reloadEvery
	if due {
		f.checked = time.Now()
	}
	mod := f.modTime
	f.mu.Unlock()
	if !due {
		return
	}
	if st, err := os.Stat(f.path); err == nil && !st.ModTime().Equal(mod) {
		_ = f.reload()
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
