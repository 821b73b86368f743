package server

import (
	"embed"
	"net/http"
)

// dashboardFiles is the live dashboard: static files, no build step. The
// page reads GET /v1/stats every second.
//
//go:embed dashboard/index.html dashboard/dashboard.js dashboard/dashboard.css
var dashboardFiles embed.FS

// dashboardPaths maps the dashboard's URL paths to its files.
var dashboardPaths = map[string]string{"/": "index.html", "/dashboard.js": "dashboard.js", "/dashboard.css": "dashboard.css"}

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
