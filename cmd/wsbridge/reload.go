package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"syscall"

	"go.yaml.in/yaml/v3"

	"github.com/wsbridge/wsbridge/internal/auth"
	"github.com/wsbridge/wsbridge/internal/certfile"
	"github.com/wsbridge/wsbridge/server"
)

// SIGHUP reloads what can be reloaded and never stops the gateway (as
// nginx, Envoy and Prometheus do): the token file, the TLS certificate
// and key, the configuration's method rules (the allow and deny lists
// and the method policies: retry, hedge, dedup, cache, and the config
// file's methods:), the limits on calls in flight and /ws clients, and
// the backends (added, removed, reweighted: a removed backend drains its
// calls, see bridge.Bridge.SetBackends). It reads the flags, environment
// and config file again, as at start; a configuration that does not load
// keeps the one in use, and says why. One log line says what changed,
// and what changed but needs a restart to take effect.

// reloadable are the settings a reload applies. The token file and the
// TLS files are reread at their paths; a new path needs a restart.
var reloadable = []string{"allow-methods", "deny-methods", "retry-methods", "hedge-methods", "hedge-after",
	"dedup-methods", "cache-methods", "cache-ttl", "methods",
	"backend", "backends", "max-inflight", "max-inflight-per-client", "max-clients"}

// reloader applies SIGHUPs to a running server. It is used by one
// goroutine (watchReload's).
type reloader struct {
	args   []string
	demo   bool // the server runs the embedded demo backend
	srv    *server.Server
	tokens server.Authenticator
	tls    *certfile.Pair // nil without TLS
	log    *slog.Logger
	// inEffect is the configuration the server runs: the reloadable
	// settings as last applied, the others as at start (so that a change
	// that needs a restart is named at every reload until then).
	inEffect map[string]any
}

// watchReload reloads on each SIGHUP until ctx ends.
func watchReload(ctx context.Context, args []string, sf *serveFlags, fs *flagSet, srv *server.Server, tokens server.Authenticator, log *slog.Logger) {
	r := &reloader{args: args, demo: sf.demo, srv: srv, tokens: tokens, tls: sf.tlsPair, log: log, inEffect: settings(fs, sf.sections)}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			r.reload()
		case <-ctx.Done():
			return
		}
	}
}

// reload is one SIGHUP.
func (r *reloader) reload() {
	log := r.log
	nfs := newFlagSet("serve", io.Discard)
	var nsf serveFlags
	nsf.register(nfs)
	if err := nfs.parse(r.args); err != nil {
		log.Error("reload failed (SIGHUP): the configuration in use stays", "err", err)
		return
	}
	opts, err := nsf.options(nfs, log)
	if err != nil {
		log.Error("reload failed (SIGHUP): the configuration in use stays", "err", err)
		return
	}
	after := settings(nfs, nsf.sections)
	var changed, restart []string
	for _, key := range slices.Sorted(mapsKeys(r.inEffect, after)) {
		if reflect.DeepEqual(r.inEffect[key], after[key]) {
			continue
		}
		if slices.Contains(reloadable, key) {
			changed = append(changed, key)
		} else {
			restart = append(restart, key)
		}
	}
	backends := "unchanged"
	if !r.demo && !nsf.demo { // the demo backend's address is its own; --demo needs a restart
		ch, err := r.srv.SetBackends(opts.Bridge.Backends)
		if err != nil {
			log.Error("reload failed (SIGHUP): the configuration in use stays", "err", err)
			return
		}
		backends = ch.String()
	}
	r.srv.Bridge().SetRules(opts.Bridge.AllowMethods, opts.Bridge.DenyMethods, opts.Bridge.Methods)
	r.srv.SetLimits(server.Limits{MaxInFlight: opts.Bridge.MaxInFlight, MaxInFlightPerClient: opts.MaxInFlightPerClient, MaxClients: opts.MaxClients})
	for _, key := range changed {
		if v, ok := after[key]; ok {
			r.inEffect[key] = v
		} else {
			delete(r.inEffect, key)
		}
	}
	if tf, ok := r.tokens.(*auth.TokenFile); ok {
		if err := tf.Reload(); err != nil {
			log.Error("SIGHUP: token file", "err", err)
		}
	}
	if r.tls != nil {
		if _, err := r.tls.Reload(); err != nil {
			log.Error("SIGHUP: TLS files do not load; the certificate in use stays", "err", err)
		}
	}
	log.Info("reloaded (SIGHUP)", "reloaded", "token file, TLS files, method rules, limits, backends",
		"changed", changed, "backends", backends, "needs_restart", restart)
}

// settings is the effective configuration as a map of setting to value
// (the flags, and the config file's backends: and methods: as read with
// them: the file may have changed since).
func settings(fs *flagSet, sec sections) map[string]any {
	m := map[string]any{}
	out, err := fs.effective(func(_ string, v []string) []string { return v })
	if err == nil {
		_ = yaml.Unmarshal(out, &m)
	}
	if extra, err := sec.appendYAML(nil); err == nil {
		_ = yaml.Unmarshal(extra, &m)
	}
	return m
}

func mapsKeys(ms ...map[string]any) func(func(string) bool) {
	return func(yield func(string) bool) {
		seen := map[string]bool{}
		for _, m := range ms {
			for k := range m {
				if !seen[k] {
					seen[k] = true
					if !yield(k) {
						return
					}
				}
			}
		}
	}
}
