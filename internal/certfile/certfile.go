// Package certfile serves a TLS certificate and key from their files and
// follows them as they change: cert-manager and others renew a
// certificate by rewriting its files (a Kubernetes Secret's volume swaps
// them), and the listeners must hand new handshakes the new certificate
// without a restart. A pair that fails to load keeps the one that worked,
// and says why in the log.
package certfile

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Pair is a certificate and its key, loaded from files.
type Pair struct {
	// Static after Load.
	certPath, keyPath string
	log               *slog.Logger
	// checkEvery bounds how often a handshake looks at the files.
	checkEvery time.Duration

	mu sync.Mutex
	// Guarded by mu.
	cert     *tls.Certificate
	notAfter time.Time
	certMod  time.Time
	keyMod   time.Time
	checked  time.Time
}

// Load reads the pair; it fails when either file cannot be read or they
// do not make a certificate. log (nil: discard) hears of every reload.
func Load(certPath, keyPath string, log *slog.Logger) (*Pair, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p := &Pair{certPath: certPath, keyPath: keyPath, log: log, checkEvery: time.Second}
	if _, err := p.Reload(); err != nil {
		return nil, err
	}
	return p, nil
}

// Reload reads the files again (SIGHUP). It reports whether the
// certificate changed; on error the one loaded before stays.
func (p *Pair) Reload() (changed bool, err error) {
	certSt, err := os.Stat(p.certPath)
	if err != nil {
		return false, fmt.Errorf("TLS certificate: %w", err)
	}
	keySt, err := os.Stat(p.keyPath)
	if err != nil {
		return false, fmt.Errorf("TLS key: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(p.certPath, p.keyPath)
	if err != nil {
		return false, fmt.Errorf("TLS certificate %s and key %s: %w", p.certPath, p.keyPath, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return false, fmt.Errorf("TLS certificate %s: %w", p.certPath, err)
	}
	cert.Leaf = leaf
	p.mu.Lock()
	defer p.mu.Unlock()
	changed = p.cert == nil || !leaf.Equal(p.cert.Leaf)
	p.cert, p.notAfter = &cert, leaf.NotAfter
	p.certMod, p.keyMod, p.checked = certSt.ModTime(), keySt.ModTime(), time.Now()
	return changed, nil
}

// maybeReload reloads the pair when a file changed since the last look,
// at most once per checkEvery.
func (p *Pair) maybeReload() {
	p.mu.Lock()
	if time.Since(p.checked) < p.checkEvery {
		p.mu.Unlock()
		return
	}
	p.checked = time.Now()
	certMod, keyMod := p.certMod, p.keyMod
	p.mu.Unlock()
	certSt, err1 := os.Stat(p.certPath)
	keySt, err2 := os.Stat(p.keyPath)
	if err1 != nil || err2 != nil {
		p.log.Error("TLS files unreadable; serving the certificate loaded before", "err", errors.Join(err1, err2))
		return
	}
	if certSt.ModTime().Equal(certMod) && keySt.ModTime().Equal(keyMod) {
		return
	}
	if changed, err := p.Reload(); err != nil {
		p.log.Error("TLS files changed but do not load; serving the certificate loaded before", "err", err)
	} else if changed {
		p.log.Info("TLS certificate reloaded", "cert", p.certPath, "not_after", p.NotAfter())
	}
}

// GetCertificate is tls.Config.GetCertificate: the current certificate,
// after a look at the files.
func (p *Pair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	p.maybeReload()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cert, nil
}

// NotAfter is when the current certificate expires.
func (p *Pair) NotAfter() time.Time {
	p.maybeReload()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.notAfter
}
