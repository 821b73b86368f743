// Package observe tests deploy/observability/ (the Grafana dashboard and
// the Prometheus alerting rules) against a real Prometheus scraping a real
// wsbridge under load: every dashboard and alert expression must evaluate
// to data, name only metrics the gateway exports, and agree with the
// gateway's own stats; the alerts that the load should trip must be
// pending, and no other. It is a module of its own so that the main module
// does not depend on Prometheus.
//
// The live tests need Debian's prometheus package (/usr/bin/prometheus and
// /usr/bin/promtool). Without it they skip, saying so, unless
// WSBRIDGE_REQUIRE_PROMETHEUS is set, when they fail: `make observe-check`
// installs the package and sets it.
package observe
