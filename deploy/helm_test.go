package deploy

import (
	"fmt"
	"maps"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/diff"
)

// The chart is rendered as `helm install edge deploy/helm/wsbridge
// --namespace gateways` renders it: a release name that does not contain
// the chart's, so that the objects are named edge-wsbridge and a name or
// selector written out in a template shows.
const (
	chartDir         = "helm/wsbridge"
	releaseName      = "edge"
	releaseNamespace = "gateways"
)

// kubeVersion is the oldest Kubernetes the chart supports (its Chart.yaml
// kubeVersion): rendering and linting are for it.
var kubeVersion = chartutil.KubeVersion{Version: "v1.30.0", Major: "1", Minor: "30"}

// chartValueFiles are the values the chart is checked with: its defaults
// ("") and each ci/*-values.yaml (chart-testing's layout).
func chartValueFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir, "ci", "*-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no %s/ci/*-values.yaml", chartDir)
	}
	return append([]string{""}, files...)
}

// valuesName names a values file in test names: helm-defaults,
// helm-all-on, ...
func valuesName(file string) string {
	if file == "" {
		return "helm-defaults"
	}
	return "helm-" + strings.TrimSuffix(filepath.Base(file), "-values.yaml")
}

// chartSources are the chart's renderings, one per values file, for
// forEachSource.
func chartSources(t *testing.T) []source {
	var srcs []source
	for _, file := range chartValueFiles(t) {
		srcs = append(srcs, source{valuesName(file), func(t *testing.T) objects { return renderChartFile(t, file) }})
	}
	return srcs
}

func readValues(t *testing.T, file string) map[string]any {
	t.Helper()
	if file == "" {
		return map[string]any{}
	}
	vals, err := chartutil.ReadValuesFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return vals.AsMap()
}

// renderChartFile renders the chart with a values file ("": its defaults)
// and decodes the objects strictly.
func renderChartFile(t *testing.T, file string) objects {
	t.Helper()
	docs, err := renderChart(readValues(t, file))
	if err != nil {
		t.Fatalf("%s: %v", valuesName(file), err)
	}
	o, err := decodeObjects(docs)
	if err != nil {
		t.Fatalf("%s: %v", valuesName(file), err)
	}
	return o
}

// renderChart renders the chart as helm install does, with Helm's own
// loader, values (coalesced with values.yaml, validated against
// values.schema.json) and template engine, and returns the objects' YAML
// documents.
func renderChart(vals map[string]any) ([][]byte, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, err
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = kubeVersion
	if !chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, caps.KubeVersion.String()) {
		return nil, fmt.Errorf("the chart's kubeVersion %q excludes %s", ch.Metadata.KubeVersion, caps.KubeVersion.String())
	}
	opts := chartutil.ReleaseOptions{Name: releaseName, Namespace: releaseNamespace, Revision: 1, IsInstall: true}
	rv, err := chartutil.ToRenderValues(ch, vals, opts, caps)
	if err != nil {
		return nil, err
	}
	out, err := engine.Render(ch, rv)
	if err != nil {
		return nil, err
	}
	if notes := out[path.Join(ch.Name(), "templates", "NOTES.txt")]; strings.TrimSpace(notes) == "" {
		return nil, fmt.Errorf("NOTES.txt renders empty")
	}
	var docs [][]byte
	for _, name := range slices.Sorted(maps.Keys(out)) {
		// As helm install: partials and NOTES.txt are no manifests.
		if base := path.Base(name); strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		d, err := splitDocs([]byte(out[name]))
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		docs = append(docs, d...)
	}
	return docs, nil
}

// TestChartLint is `helm lint --strict` (warnings fail too) with each set
// of values.
func TestChartLint(t *testing.T) {
	for _, file := range chartValueFiles(t) {
		t.Run(valuesName(file), func(t *testing.T) {
			l := lint.AllWithKubeVersion(chartDir, readValues(t, file), releaseNamespace, &kubeVersion)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Error(m)
				} else {
					t.Log(m)
				}
			}
		})
	}
}

// TestChartRefusesBadValues checks that the chart refuses, at install, what
// the gateway would refuse at start (no backend, the demo backend besides
// others) or what would break the pods (files from no Secret, a termination
// budget shorter than the shutdown), and misspelt values.
func TestChartRefusesBadValues(t *testing.T) {
	for _, tc := range []struct{ name, values, want string }{
		{"defaults", "", ""},
		{"no backend", "backends: null", "no backend"},
		{"demo and a backend", "demo: true", "give one of them"},
		{"tls without a Secret", "tls: {enabled: true}", "tls.secretName"},
		{"auth without tokens", "auth: {enabled: true}", "auth.existingSecret or auth.tokens"},
		{"termination budget", "terminationGracePeriodSeconds: 15", "does not cover"},
		{"misspelt value", "hpa: {maxReplica: 5}", "maxReplica"},
		{"backend not a WebSocket URL", "backends: [http://backend:8546/]", "backends"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vals, err := chartutil.ReadValues([]byte(tc.values))
			if err != nil {
				t.Fatal(err)
			}
			_, err = renderChart(vals)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("%s: %v", tc.values, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("%s: error %v, want one saying %q", tc.values, err, tc.want)
			}
		})
	}
}

// TestChartDefaultsMatchTheManifests compares the chart's default
// rendering with deploy/kubernetes beyond the checks both pass: what runs
// (the pod template), how it rolls out, the client Service, the PDB and
// the HPA are the same, so that a change to one must be made to the other.
func TestChartDefaultsMatchTheManifests(t *testing.T) {
	type view struct {
		Template             corev1.PodTemplateSpec
		Strategy             appsv1.DeploymentStrategy
		RevisionHistoryLimit *int32
		Service              corev1.ServiceSpec
		PDB                  policyv1.PodDisruptionBudgetSpec
		HPA                  autoscalingv2.HorizontalPodAutoscalerSpec
	}
	// What may differ: names, labels and selectors (checked against the
	// pods by TestSelectorsMatchPodLabels), the image (kustomization.yaml's
	// images against the chart's image values), and the replica count,
	// which the chart leaves to the HPA.
	viewOf := func(o objects) view {
		t.Helper()
		if len(o.services) != 1 || o.pdb == nil || o.hpa == nil {
			t.Fatalf("%d Services, PDB %v, HPA %v: want one of each", len(o.services), o.pdb != nil, o.hpa != nil)
		}
		v := view{
			Template:             *o.dep.Spec.Template.DeepCopy(),
			Strategy:             o.dep.Spec.Strategy,
			RevisionHistoryLimit: o.dep.Spec.RevisionHistoryLimit,
			Service:              *o.services[0].Spec.DeepCopy(),
			PDB:                  *o.pdb.Spec.DeepCopy(),
			HPA:                  *o.hpa.Spec.DeepCopy(),
		}
		v.Template.Labels = nil
		for i := range v.Template.Spec.TopologySpreadConstraints {
			v.Template.Spec.TopologySpreadConstraints[i].LabelSelector = nil
		}
		for i := range v.Template.Spec.Containers {
			v.Template.Spec.Containers[i].Image = ""
		}
		v.Service.Selector = nil
		v.PDB.Selector = nil
		v.HPA.ScaleTargetRef.Name = ""
		return v
	}
	want, got := viewOf(renderKustomize(t)), viewOf(renderChartFile(t, ""))
	// The manifests also scale on calls in flight; the chart does only
	// with hpa.inFlightAverage, as that metric needs a custom metrics
	// adapter, without which the HPA never scales down.
	want.HPA.Metrics = slices.DeleteFunc(want.HPA.Metrics, func(m autoscalingv2.MetricSpec) bool {
		return m.Type == autoscalingv2.PodsMetricSourceType
	})
	if !equality.Semantic.DeepEqual(want, got) {
		t.Errorf("the chart's defaults (+) differ from deploy/kubernetes (-):\n%s", diff.Diff(want, got))
	}
}
