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
	"github.com/wsbridge/wsbridge/server"
)

// SIGHUP reloads what can be reloaded and never stops the gateway (as
// nginx, Envoy and Prometheus do): the token file, the TLS certificate
// and key, and the configuration's method rules (the allow and deny
// lists and the method policies: retry, hedge, dedup, cache, and the
// config file's methods:). It reads the flags, environment and config
// file again, as at start; a configuration that does not load keeps the
// one in use, and says why. One log line says what changed, and what
// changed but needs a restart to take effect.

// reloadable are the settings a reload applies.
var reloadable = []string{"allow-methods", "deny-methods", "retry-methods", "hedge-methods", "hedge-after",
	"dedup-methods", "cache-methods", "cache-ttl", "methods", "auth-token-file", "tls-cert", "tls-key"}

// watchReload reloads on each SIGHUP until ctx ends.
func watchReload(ctx context.Context, args []string, sf *serveFlags, fs *flagSet, srv *server.Server, tokens server.Authenticator, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			reload(args, sf, fs, srv, tokens, log)
		case <-ctx.Done():
			return
		}
	}
}

// reload is one SIGHUP.
func reload(args []string, sf *serveFlags, fs *flagSet, srv *server.Server, tokens server.Authenticator, log *slog.Logger) {
	nfs := newFlagSet("serve", io.Discard)
	var nsf serveFlags
	nsf.register(nfs)
	if err := nfs.parse(args); err != nil {
		log.Error("reload failed (SIGHUP): the configuration in use stays", "err", err)
		return
	}
	opts, err := nsf.options(nfs, log)
	if err != nil {
		log.Error("reload failed (SIGHUP): the configuration in use stays", "err", err)
		return
	}
	before, after := settings(fs), settings(nfs)
	var changed, restart []string
	for _, key := range slices.Sorted(mapsKeys(before, after)) {
		if reflect.DeepEqual(before[key], after[key]) {
			continue
		}
		if slices.Contains(reloadable, key) {
			changed = append(changed, key)
		} else {
			restart = append(restart, key)
		}
	}
	srv.Bridge().SetRules(opts.Bridge.AllowMethods, opts.Bridge.DenyMethods, opts.Bridge.Methods)
	if tf, ok := tokens.(*auth.TokenFile); ok {
		if err := tf.Reload(); err != nil {
			log.Error("SIGHUP: token file", "err", err)
		}
	}
	if sf.tlsPair != nil {
		if _, err := sf.tlsPair.Reload(); err != nil {
			log.Error("SIGHUP: TLS files do not load; the certificate in use stays", "err", err)
		}
	}
	log.Info("reloaded (SIGHUP)", "reloaded", "token file, TLS files, method rules", "changed", changed, "needs_restart", restart)
}

// settings is the effective configuration as a map of setting to value
// (the flags, and the config file's backends: and methods:).
func settings(fs *flagSet) map[string]any {
	m := map[string]any{}
	out, err := fs.effective(func(_ string, v []string) []string { return v })
	if err == nil {
		_ = yaml.Unmarshal(out, &m)
	}
	if sec, err := readSections(fs.config); err == nil {
		if extra, err := sec.appendYAML(nil); err == nil {
			_ = yaml.Unmarshal(extra, &m)
		}
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
