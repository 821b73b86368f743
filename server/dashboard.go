package server

import (
	"embed"
	"net/http"

	"github.com/wsbridge/wsbridge/internal/statsdecl"
)

// dashboardFiles is the live dashboard: static files, no build step. The
// page reads GET /v1/stats every second.
//
//go:embed dashboard/index.html dashboard/dashboard.js dashboard/dashboard.css
var dashboardFiles embed.FS

// dashboardPaths maps the dashboard's URL paths to its files.
var dashboardPaths = map[string]string{"/": "index.html", "/dashboard.js": "dashboard.js", "/dashboard.css": "dashboard.css"}

// serveDashboardSchema is GET /dashboard-schema.json: the stats'
// declaration (name, help, kind, section of every field), from which the
// dashboard draws its table of every counter.
func serveDashboardSchema(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(dashboardSchema)
}

var dashboardSchema = statsdecl.Schema()

// serveDashboard serves GET / and the dashboard's script and style.
func serveDashboard(w http.ResponseWriter, r *http.Request) {
	name := dashboardPaths[r.URL.Path]
	if name == "" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeFileFS(w, r, dashboardFiles, "dashboard/"+name)
}
