package deploy

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const (
	repoRoot    = ".."
	manifestDir = "kubernetes"
	appName     = "wsbridge"

	// terminationMargin is what terminationGracePeriodSeconds must leave
	// beyond the preStop sleep and the shutdown grace: the drain is bounded
	// by the grace, closing the backend link and exiting come after it.
	terminationMargin = time.Second
)

// The manifest files and the kind of the object each must hold.
var manifestFiles = []struct{ file, kind string }{
	{"deployment.yaml", "Deployment"},
	{"service.yaml", "Service"},
	{"pdb.yaml", "PodDisruptionBudget"},
	{"hpa.yaml", "HorizontalPodAutoscaler"},
}

// apiVersions are the kinds deploy/ may render, each with the only
// apiVersion it may have.
var apiVersions = map[string]string{
	"Deployment":              "apps/v1",
	"Service":                 "v1",
	"Secret":                  "v1",
	"PodDisruptionBudget":     "policy/v1",
	"HorizontalPodAutoscaler": "autoscaling/v2",
	"ServiceMonitor":          "monitoring.coreos.com/v1",
}

// listeners are the gateway's listen flags and the container ports that
// must carry them.
var listeners = []struct{ flag, port string }{
	{"grpc-addr", "grpc"},
	{"http-addr", "http"},
	{"admin-addr", "admin"},
}

// fileFlags are the serve flags that name a file for the gateway to read.
// In a pod (distroless image, read-only root filesystem) such a file can
// only come from a mounted volume.
var fileFlags = []string{"auth-token-file", "tls-cert", "tls-key", "backend-ca", "config", "http-rules", "descriptor-set"}

// ---------------------------------------------------------------------------
// The binary, built once from ../cmd/wsbridge.

var (
	binDir   string
	binOnce  sync.Once
	binPath  string
	binErr   error
	binStamp map[string]string // -X symbol (from the Dockerfile) -> value stamped into the test build
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wsbridge-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// wsbridge returns the path of the wsbridge binary, built like the
// Dockerfile builds it (CGO_ENABLED=0, -trimpath, the Dockerfile's -X
// symbols stamped with test values).
func wsbridge(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binStamp = map[string]string{}
		var ldflags []string
		if df, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile")); err == nil {
			for _, m := range ldflagX.FindAllStringSubmatch(string(df), -1) {
				sym := m[1]
				binStamp[sym] = "deploy-check-" + sym[strings.LastIndex(sym, ".")+1:]
				ldflags = append(ldflags, "-X", sym+"="+binStamp[sym])
			}
		}
		binPath = filepath.Join(binDir, "wsbridge")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", strings.Join(ldflags, " "), "-o", binPath, "./cmd/wsbridge")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/wsbridge: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// ldflagX finds the -X symbols the Dockerfile stamps.
var ldflagX = regexp.MustCompile(`-X\s+([\w./-]+)=(\S*?)(?:["'\s]|$)`)

// baseEnv is the test's environment without any WSBRIDGE_* variable, so
// that only the manifest's reach the binary.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WSBRIDGE_") {
			env = append(env, kv)
		}
	}
	return env
}

// serveFlags parses `wsbridge serve --help`: the flag names and, for each
// environment variable shown, its flag.
func serveFlags(t *testing.T) (flags map[string]bool, envFlag map[string]string) {
	t.Helper()
	cmd := exec.Command(wsbridge(t), "serve", "--help")
	cmd.Env = baseEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("wsbridge serve --help: %v\n%s", err, out)
	}
	flags, envFlag = map[string]bool{}, map[string]string{}
	flagLine := regexp.MustCompile(`^  --([a-z0-9][a-z0-9-]*)`)
	envRef := regexp.MustCompile(`\[\$(WSBRIDGE_[A-Z0-9_]+)\]\s*$`)
	current := ""
	for line := range strings.SplitSeq(string(out), "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			current = m[1]
			flags[current] = true
		}
		if m := envRef.FindStringSubmatch(line); m != nil && current != "" {
			envFlag[m[1]] = current
		}
	}
	for _, must := range []string{"grpc-addr", "http-addr", "backend", "shutdown-grace"} {
		if !flags[must] {
			t.Fatalf("could not parse serve --help: no --%s in\n%s", must, out)
		}
	}
	if len(envFlag) != len(flags) {
		t.Fatalf("serve --help: %d flags but %d environment variables", len(flags), len(envFlag))
	}
	return flags, envFlag
}

// ---------------------------------------------------------------------------
// Manifests.

// decodeStrict decodes one YAML document into obj, failing on unknown or
// duplicate fields.
func decodeStrict(doc []byte, obj any) error {
	return yaml.UnmarshalStrict(doc, obj)
}

// splitDocs splits a YAML stream into its non-empty documents.
func splitDocs(data []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		var v any
		if err := yaml.Unmarshal(doc, &v); err != nil {
			return nil, err
		}
		if v != nil {
			docs = append(docs, doc)
		}
	}
}

func TestManifestFilesDecodeStrictly(t *testing.T) {
	for _, mf := range manifestFiles {
		t.Run(mf.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(manifestDir, mf.file))
			if err != nil {
				t.Fatal(err)
			}
			docs, err := splitDocs(data)
			if err != nil {
				t.Fatal(err)
			}
			if len(docs) != 1 {
				t.Fatalf("%d YAML documents, want 1", len(docs))
			}
			if _, err := decodeObjects(docs); err != nil {
				t.Fatal(err)
			}
			var meta struct {
				metav1.TypeMeta `json:",inline"`
				Metadata        metav1.ObjectMeta `json:"metadata"`
			}
			if err := yaml.Unmarshal(docs[0], &meta); err != nil {
				t.Fatal(err)
			}
			if meta.Kind != mf.kind {
				t.Errorf("kind %s, want %s", meta.Kind, mf.kind)
			}
			if meta.Metadata.Name != appName {
				t.Errorf("metadata.name = %q, want %q", meta.Metadata.Name, appName)
			}
		})
	}
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(manifestDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kusttypes.Kustomization
	if err := decodeStrict(data, &k); err != nil {
		t.Fatalf("strict decoding kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("apiVersion/kind = %s/%s", k.APIVersion, k.Kind)
	}
	var want []string
	for _, mf := range manifestFiles {
		want = append(want, mf.file)
	}
	got := slices.Clone(k.Resources)
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("resources = %q, want %q", got, want)
	}
	// Every YAML file beside it is either a listed resource or the
	// kustomization itself: a new manifest must not be forgotten.
	files, err := filepath.Glob(filepath.Join(manifestDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		base := filepath.Base(f)
		if base != "kustomization.yaml" && !slices.Contains(k.Resources, base) {
			t.Errorf("%s is not listed in kustomization.yaml", base)
		}
	}
}

// objects are what a source renders (the kustomization, or the Helm chart
// with some values), decoded strictly into the Kubernetes API types.
type objects struct {
	dep      *appsv1.Deployment
	services []*corev1.Service
	secrets  []*corev1.Secret
	pdb      *policyv1.PodDisruptionBudget          // nil: none
	hpa      *autoscalingv2.HorizontalPodAutoscaler // nil: none
	sm       *monitoringv1.ServiceMonitor           // nil: none
}

// decodeObjects decodes YAML documents strictly (no unknown or duplicate
// field) into the type of their kind, which must be one of apiVersions'
// with its apiVersion.
func decodeObjects(docs [][]byte) (objects, error) {
	var o objects
	seen := map[string]int{}
	for _, doc := range docs {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return o, err
		}
		want, ok := apiVersions[tm.Kind]
		if !ok {
			return o, fmt.Errorf("unexpected kind %q (apiVersion %q)", tm.Kind, tm.APIVersion)
		}
		if tm.APIVersion != want {
			return o, fmt.Errorf("%s: apiVersion %s, want %s", tm.Kind, tm.APIVersion, want)
		}
		seen[tm.Kind]++
		var obj any
		switch tm.Kind {
		case "Deployment":
			o.dep = new(appsv1.Deployment)
			obj = o.dep
		case "Service":
			svc := new(corev1.Service)
			o.services = append(o.services, svc)
			obj = svc
		case "Secret":
			sec := new(corev1.Secret)
			o.secrets = append(o.secrets, sec)
			obj = sec
		case "PodDisruptionBudget":
			o.pdb = new(policyv1.PodDisruptionBudget)
			obj = o.pdb
		case "HorizontalPodAutoscaler":
			o.hpa = new(autoscalingv2.HorizontalPodAutoscaler)
			obj = o.hpa
		case "ServiceMonitor":
			o.sm = new(monitoringv1.ServiceMonitor)
			obj = o.sm
		}
		if err := decodeStrict(doc, obj); err != nil {
			return o, fmt.Errorf("%s: strict decoding into %T: %v", tm.Kind, obj, err)
		}
	}
	// The checks look at the one object of these kinds.
	for _, kind := range []string{"Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"} {
		if seen[kind] > 1 {
			return o, fmt.Errorf("%d %s objects, want at most one", seen[kind], kind)
		}
	}
	return o, nil
}

// renderKustomize renders deploy/kubernetes as `kubectl apply -k` does
// (kustomize in-process).
func renderKustomize(t *testing.T) objects {
	t.Helper()
	dir, err := filepath.Abs(manifestDir)
	if err != nil {
		t.Fatal(err)
	}
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", manifestDir, err)
	}
	var docs [][]byte
	for _, r := range resMap.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, doc)
	}
	o, err := decodeObjects(docs)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", manifestDir, err)
	}
	// Exactly the manifests: one object of each file's kind.
	if o.dep == nil || len(o.services) != 1 || o.pdb == nil || o.hpa == nil || len(o.secrets) > 0 || o.sm != nil {
		t.Fatalf("kustomize rendered %d objects, want one of each manifest file's kind", len(docs))
	}
	return o
}

// A source renders the gateway's objects one way: the kustomization, or the
// Helm chart with one set of values (helm_test.go).
type source struct {
	name   string
	render func(t *testing.T) objects
}

func sources(t *testing.T) []source {
	return append([]source{{"kubernetes", renderKustomize}}, chartSources(t)...)
}

// forEachSource runs check on what each source renders: the manifests and
// the chart must keep the same guarantees, checked by the same code.
func forEachSource(t *testing.T, check func(t *testing.T, o objects)) {
	for _, src := range sources(t) {
		t.Run(src.name, func(t *testing.T) {
			o := src.render(t)
			if o.dep == nil {
				t.Fatal("no Deployment")
			}
			check(t, o)
		})
	}
}

// container returns the gateway's container.
func (o objects) container(t *testing.T) *corev1.Container {
	t.Helper()
	for i := range o.dep.Spec.Template.Spec.Containers {
		if c := &o.dep.Spec.Template.Spec.Containers[i]; c.Name == appName {
			return c
		}
	}
	t.Fatalf("no container named %q in the Deployment", appName)
	return nil
}

// secret returns the Secret of that name among the objects, nil if the
// source does not render it.
func (o objects) secret(name string) *corev1.Secret {
	for _, s := range o.secrets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// containerPort returns the container's port with that name.
func containerPort(t *testing.T, c *corev1.Container, name string) corev1.ContainerPort {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("container %s has no port named %q", c.Name, name)
	return corev1.ContainerPort{}
}

// portOf resolves a port reference (a Service's targetPort, a probe's port)
// to the container's port; nil if it names none.
func portOf(c *corev1.Container, ref intstr.IntOrString) *corev1.ContainerPort {
	for i, cp := range c.Ports {
		if (ref.Type == intstr.String && ref.StrVal == cp.Name) || (ref.Type == intstr.Int && ref.IntVal == cp.ContainerPort) {
			return &c.Ports[i]
		}
	}
	return nil
}

// listenPort returns the port of the effective listen address of flag,
// checking that it listens on every interface (reachable from outside the
// pod).
func listenPort(t *testing.T, cfg map[string]string, flag string) int32 {
	t.Helper()
	addr := cfg[flag]
	if addr == "" {
		t.Fatalf("--%s is not set", flag)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("effective --%s %q: %v", flag, addr, err)
	}
	if host != "" && host != "0.0.0.0" && host != "::" {
		t.Errorf("effective --%s %q: listens on %s only, unreachable from outside the pod (use 0.0.0.0)", flag, addr, host)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatalf("effective --%s %q: %v", flag, addr, err)
	}
	return int32(n)
}

func TestKustomizeRenders(t *testing.T) {
	o := renderKustomize(t)
	c := o.container(t)
	if c.Image == "" {
		t.Error("the container has no image")
	}
	t.Logf("image after kustomize: %s", c.Image)
}

func TestSelectorsMatchPodLabels(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		podLabels := labels.Set(o.dep.Spec.Template.Labels)
		if len(podLabels) == 0 {
			t.Fatal("the pod template has no labels")
		}
		check := func(what string, ls *metav1.LabelSelector) {
			t.Helper()
			if ls == nil || (len(ls.MatchLabels) == 0 && len(ls.MatchExpressions) == 0) {
				t.Errorf("%s: empty selector (it would select every pod)", what)
				return
			}
			sel, err := metav1.LabelSelectorAsSelector(ls)
			if err != nil {
				t.Errorf("%s: %v", what, err)
				return
			}
			if !sel.Matches(podLabels) {
				t.Errorf("%s %s does not match the pod labels %v", what, sel, podLabels)
			}
		}
		check("Deployment selector", o.dep.Spec.Selector)
		if o.pdb != nil {
			check("PodDisruptionBudget selector", o.pdb.Spec.Selector)
		}
		for _, svc := range o.services {
			check("Service "+svc.Name+" selector", &metav1.LabelSelector{MatchLabels: svc.Spec.Selector})
		}
		for i, tsc := range o.dep.Spec.Template.Spec.TopologySpreadConstraints {
			check(fmt.Sprintf("topologySpreadConstraints[%d]", i), tsc.LabelSelector)
		}
	})
}

func TestHPATargetsTheDeployment(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		if o.hpa == nil {
			// Then the Deployment's count is the count: more than one pod,
			// or every rollout and node drain is an outage.
			if r := o.dep.Spec.Replicas; r == nil || *r < 2 {
				t.Errorf("no HPA, and Deployment replicas %v: want at least 2", r)
			}
			return
		}
		ref := o.hpa.Spec.ScaleTargetRef
		if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != o.dep.Name {
			t.Errorf("scaleTargetRef = %s %s %q, want apps/v1 Deployment %q", ref.APIVersion, ref.Kind, ref.Name, o.dep.Name)
		}
		minR := ptrOr(o.hpa.Spec.MinReplicas, 1)
		if minR < 2 || minR > o.hpa.Spec.MaxReplicas {
			t.Errorf("replicas %d..%d: want at least 2 and min <= max", minR, o.hpa.Spec.MaxReplicas)
		}
		// No replicas leaves the count to the HPA (an upgrade does not
		// reset it); a count outside the HPA's range would be undone.
		if r := o.dep.Spec.Replicas; r != nil && (*r < minR || *r > o.hpa.Spec.MaxReplicas) {
			t.Errorf("Deployment replicas %d outside the HPA's %d..%d", *r, minR, o.hpa.Spec.MaxReplicas)
		}
		if len(o.hpa.Spec.Metrics) == 0 {
			t.Fatal("the HPA has no metrics")
		}
		c := o.container(t)
		for _, m := range o.hpa.Spec.Metrics {
			switch m.Type {
			case autoscalingv2.ResourceMetricSourceType:
				// Utilization is relative to the request: without one the HPA
				// cannot compute it.
				if m.Resource.Target.Type == autoscalingv2.UtilizationMetricType {
					if _, ok := c.Resources.Requests[m.Resource.Name]; !ok {
						t.Errorf("HPA scales on %s utilization but the container requests no %s", m.Resource.Name, m.Resource.Name)
					}
				}
			case autoscalingv2.PodsMetricSourceType:
				// The name is checked against the binary's /metrics in
				// TestBinaryServesTheManifestsProbesAndMetrics.
				if m.Pods.Metric.Name == "" {
					t.Error("Pods metric without a name")
				}
			}
		}
	})
}

func TestPDBAllowsEvictions(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		if o.pdb == nil {
			t.Skip("no PodDisruptionBudget")
		}
		spec := o.pdb.Spec
		if (spec.MinAvailable == nil) == (spec.MaxUnavailable == nil) {
			t.Fatal("set exactly one of minAvailable and maxUnavailable")
		}
		// The smallest scale: the HPA's minimum, or the fixed count.
		minR := ptrOr(o.dep.Spec.Replicas, 1)
		if o.hpa != nil {
			minR = ptrOr(o.hpa.Spec.MinReplicas, 1)
		}
		// A budget that can never be met at the smallest scale blocks every
		// node drain. Percentages are scaled as the disruption controller
		// scales them, rounding up.
		if v := spec.MinAvailable; v != nil {
			if n, err := intstr.GetScaledValueFromIntOrPercent(v, int(minR), true); err != nil {
				t.Errorf("minAvailable %s: %v", v.String(), err)
			} else if n >= int(minR) {
				t.Errorf("minAvailable %s is %d of %d pods (the smallest scale): no pod could ever be evicted", v.String(), n, minR)
			}
		}
		if v := spec.MaxUnavailable; v != nil {
			if n, err := intstr.GetScaledValueFromIntOrPercent(v, int(minR), true); err != nil {
				t.Errorf("maxUnavailable %s: %v", v.String(), err)
			} else if n < 1 {
				t.Errorf("maxUnavailable %s is %d of %d pods (the smallest scale): no pod could ever be evicted", v.String(), n, minR)
			}
		}
	})
}

// wantAppProtocol is the appProtocol of a Service port, from the container
// port it targets and whether the gateway serves TLS there.
func wantAppProtocol(port string, tls bool) string {
	switch {
	case port == "admin":
		return "http" // never TLS
	case tls:
		return "https"
	case port == "grpc":
		return "kubernetes.io/h2c"
	}
	return "http"
}

func TestServiceTargetsContainerPorts(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		c := o.container(t)
		tls := effectiveConfig(t, c)["tls-cert"] != ""
		grpcPort := containerPort(t, c, "grpc")
		var clientPorts []string // every container port but admin
		for _, cp := range c.Ports {
			if cp.Name != "admin" {
				clientPorts = append(clientPorts, cp.Name)
			}
		}
		slices.Sort(clientPorts)
		clientServices := 0
		for _, svc := range o.services {
			if svc.Spec.Type != "" && svc.Spec.Type != corev1.ServiceTypeClusterIP {
				t.Errorf("Service %s type %s, want ClusterIP", svc.Name, svc.Spec.Type)
			}
			var targets []string
			for _, sp := range svc.Spec.Ports {
				target := portOf(c, sp.TargetPort)
				if target == nil {
					t.Errorf("Service %s port %s: targetPort %s is no container port", svc.Name, sp.Name, sp.TargetPort.String())
					continue
				}
				targets = append(targets, target.Name)
				if sp.Protocol != target.Protocol && !(sp.Protocol == "" && target.Protocol == corev1.ProtocolTCP) {
					t.Errorf("Service %s port %s: protocol %s, container port %s", svc.Name, sp.Name, sp.Protocol, target.Protocol)
				}
				want := wantAppProtocol(target.Name, tls)
				if got := ptrOr(sp.AppProtocol, ""); got != want {
					t.Errorf("Service %s port %s (to container port %s): appProtocol %q, want %q", svc.Name, sp.Name, target.Name, got, want)
				}
				if target.ContainerPort == grpcPort.ContainerPort && sp.Name != "grpc" && !strings.HasPrefix(sp.Name, "grpc-") {
					t.Errorf("Service %s port %s carries gRPC: name it grpc", svc.Name, sp.Name)
				}
			}
			slices.Sort(targets)
			switch {
			case slices.Equal(targets, []string{"admin"}):
				// For a ServiceMonitor: no virtual IP, so that nothing
				// reaches the admin routes through it by mistake.
				if svc.Spec.ClusterIP != corev1.ClusterIPNone {
					t.Errorf("Service %s of the admin port: want it headless (clusterIP: None)", svc.Name)
				}
			case slices.Contains(targets, "admin"):
				t.Errorf("Service %s exposes the admin port with the client ports %v: the admin port asks no token", svc.Name, targets)
			case slices.Equal(targets, clientPorts):
				clientServices++
			default:
				t.Errorf("Service %s targets %v, want the client ports %v", svc.Name, targets, clientPorts)
			}
		}
		if clientServices != 1 {
			t.Errorf("%d Services of the client ports %v, want 1", clientServices, clientPorts)
		}
	})
}

// TestServiceMonitorScrapesTheAdminPort checks that a ServiceMonitor
// selects Services of this release only, and through them the admin
// listener in plain HTTP. (TestBinaryServesTheManifestsProbesAndMetrics
// reads its path on the binary.)
func TestServiceMonitorScrapesTheAdminPort(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		if o.sm == nil {
			t.Skip("no ServiceMonitor")
		}
		c := o.container(t)
		adminPort := listenPort(t, effectiveConfig(t, c), "admin-addr")
		spec := o.sm.Spec
		sel, err := metav1.LabelSelectorAsSelector(&spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		if sel.Empty() {
			t.Fatal("empty selector: it would scrape every Service of the namespace")
		}
		if spec.NamespaceSelector.Any || len(spec.NamespaceSelector.MatchNames) > 0 {
			t.Errorf("namespaceSelector %+v: want the ServiceMonitor's own namespace, the release's", spec.NamespaceSelector)
		}
		var selected []*corev1.Service
		for _, svc := range o.services {
			if sel.Matches(labels.Set(svc.Labels)) {
				selected = append(selected, svc)
			}
		}
		if len(selected) == 0 {
			t.Fatalf("selector %s matches none of the Services", sel)
		}
		// The job the Prometheus Operator gives the targets: the value of
		// the Service label jobLabel names, else the Service's name. The
		// alert rules (WsbridgeTargetDown: up{job="wsbridge"}) must match
		// it, or the "gateway is down" alert can never fire.
		rules, err := os.ReadFile("observability/alerts.yaml")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(rules), `up{job="wsbridge"}`) {
			t.Fatal(`alerts.yaml no longer matches up{job="wsbridge"}: update this check`)
		}
		for _, svc := range selected {
			job := svc.Name
			if v, ok := svc.Labels[spec.JobLabel]; spec.JobLabel != "" && ok {
				job = v
			}
			if job != "wsbridge" {
				t.Errorf("the targets of Service %s get job %q; the alerts match job \"wsbridge\"", svc.Name, job)
			}
		}
		if len(spec.Endpoints) == 0 {
			t.Fatal("no endpoints")
		}
		for _, ep := range spec.Endpoints {
			if ep.Scheme != nil && !strings.EqualFold(string(*ep.Scheme), "http") {
				t.Errorf("endpoint %s: scheme %s, but the admin listener speaks plain HTTP", ep.Port, *ep.Scheme)
			}
			for _, svc := range selected {
				// The Prometheus Operator scrapes the selected Services'
				// port of that name: on one without it, nothing.
				i := slices.IndexFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Name == ep.Port })
				if i < 0 {
					t.Errorf("the ServiceMonitor selects Service %s, which has no port %q", svc.Name, ep.Port)
					continue
				}
				if cp := portOf(c, svc.Spec.Ports[i].TargetPort); cp == nil || cp.ContainerPort != adminPort {
					t.Errorf("endpoint port %s of Service %s is not the admin listener (%d)", ep.Port, svc.Name, adminPort)
				}
			}
		}
	})
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func TestSecurityContext(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		pod := o.dep.Spec.Template.Spec
		c := o.container(t)
		psc := pod.SecurityContext
		if psc == nil {
			psc = &corev1.PodSecurityContext{}
		}
		csc := c.SecurityContext
		if csc == nil {
			t.Fatal("the container has no securityContext")
		}
		nonRoot := ptrOr(csc.RunAsNonRoot, ptrOr(psc.RunAsNonRoot, false))
		if !nonRoot {
			t.Error("runAsNonRoot is not true")
		}
		uid := csc.RunAsUser
		if uid == nil {
			uid = psc.RunAsUser
		}
		if uid != nil && *uid == 0 {
			t.Error("runAsUser 0")
		}
		if !ptrOr(csc.ReadOnlyRootFilesystem, false) {
			t.Error("readOnlyRootFilesystem is not true")
		}
		if ptrOr(csc.AllowPrivilegeEscalation, true) {
			t.Error("allowPrivilegeEscalation is not false")
		}
		if csc.Privileged != nil && *csc.Privileged {
			t.Error("privileged")
		}
		if csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") || len(csc.Capabilities.Add) > 0 {
			t.Errorf("capabilities %+v: want drop [ALL] and none added", csc.Capabilities)
		}
		seccomp := csc.SeccompProfile
		if seccomp == nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("seccompProfile %+v, want RuntimeDefault", seccomp)
		}

		// The image's USER against runAsNonRoot: the kubelet can only check a
		// numeric uid, so a user given by name needs runAsUser.
		df := parseDockerfile(t)
		final := df[len(df)-1]
		user, _, _ := strings.Cut(final.last("USER"), ":")
		if _, err := strconv.Atoi(user); err != nil && uid == nil {
			t.Errorf("the image's USER is %q (not numeric) and runAsNonRoot is set without runAsUser: the kubelet refuses to start the container", user)
		}
		if user == "nonroot" && strings.Contains(final.image, "distroless") && uid != nil && *uid != 65532 {
			t.Errorf("runAsUser %d, but distroless's nonroot is 65532", *uid)
		}
	})
}

// ---------------------------------------------------------------------------
// The manifest against the binary's flags and configuration.

// manifestEnv returns the container's literal environment variables (those
// with a value, not valueFrom).
func manifestEnv(c *corev1.Container) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	return env
}

// argFlags returns the flag names in args (after the subcommand).
func argFlags(args []string) []string {
	var names []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			names = append(names, name)
		}
	}
	return names
}

// effectiveConfig runs `wsbridge <container args> --print-config` with the
// container's environment and returns the configuration it prints.
func effectiveConfig(t *testing.T, c *corev1.Container) map[string]string {
	t.Helper()
	env := baseEnv()
	for k, v := range manifestEnv(c) {
		env = append(env, k+"="+v)
	}
	cmd := exec.Command(wsbridge(t), append(slices.Clone(c.Args), "--print-config")...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("wsbridge %s --print-config with the manifest's environment: %v\n%s", strings.Join(c.Args, " "), err, stderr.Bytes())
	}
	var raw map[string]any
	if err := yaml.Unmarshal(out, &raw); err != nil {
		t.Fatalf("--print-config output: %v\n%s", err, out)
	}
	cfg := map[string]string{}
	for k, v := range raw {
		cfg[k] = cfgString(v)
	}
	return cfg
}

func cfgString(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case bool:
		return strconv.FormatBool(v)
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = cfgString(e)
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v)
}

// sameSetting compares a value as given with one as --print-config shows it.
func sameSetting(given, shown string) bool {
	if given == shown {
		return true
	}
	if a, err := time.ParseDuration(given); err == nil {
		b, err := time.ParseDuration(shown)
		return err == nil && a == b
	}
	if a, err := strconv.ParseBool(given); err == nil {
		b, err := strconv.ParseBool(shown)
		return err == nil && a == b
	}
	if a, err := strconv.ParseFloat(given, 64); err == nil {
		b, err := strconv.ParseFloat(shown, 64)
		return err == nil && a == b
	}
	// Lists: comma-separated, or white-space separated in the environment
	// (--backend).
	norm := func(s string) string {
		return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == ',' || unicode.IsSpace(r) }), ",")
	}
	return norm(given) == norm(shown)
}

func TestArgsAndEnvAreServeFlags(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		c := o.container(t)
		flags, envFlag := serveFlags(t)

		if len(c.Args) == 0 || c.Args[0] != "serve" {
			t.Fatalf("container args %q: want the serve subcommand first", c.Args)
		}
		inArgs := map[string]bool{}
		for _, name := range argFlags(c.Args[1:]) {
			if !flags[name] {
				t.Errorf("container arg --%s is not a flag of wsbridge serve", name)
			}
			inArgs[name] = true
		}
		for _, e := range c.Env {
			if !strings.HasPrefix(e.Name, "WSBRIDGE_") {
				continue
			}
			// The binary ignores WSBRIDGE_* variables that are no flag's
			// (with a warning in its log), so a typo would go unnoticed:
			// this is the check.
			flag, ok := envFlag[e.Name]
			if !ok {
				t.Errorf("env %s is not read by wsbridge serve (no such flag)", e.Name)
				continue
			}
			if inArgs[flag] {
				t.Errorf("--%s is set both by args and by env %s (args win)", flag, e.Name)
			}
		}
		if len(c.EnvFrom) > 0 {
			t.Log("envFrom is not checked")
		}
		if t.Failed() {
			return
		}

		// The whole configuration parses, and every variable took effect.
		cfg := effectiveConfig(t, c)
		for name, value := range manifestEnv(c) {
			flag, ok := envFlag[name]
			if !ok {
				continue
			}
			shown, ok := cfg[flag]
			if !ok {
				t.Errorf("--print-config shows no %s", flag)
				continue
			}
			if flag == "backend" && strings.Contains(value, "@") {
				continue // credentials are redacted
			}
			if !sameSetting(value, shown) {
				t.Errorf("env %s=%q, but the effective %s is %q", name, value, flag, shown)
			}
		}
	})

	// The tables the checks use must be the binary's: a misspelt variable
	// must fail the check above, and a renamed flag must not leave a check
	// with nothing to look at.
	flags, envFlag := serveFlags(t)
	if _, ok := envFlag["WSBRIDGE_SHUTDOWN_GRACEFUL"]; ok {
		t.Error("serve --help parsing accepts an unknown variable")
	}
	for _, f := range fileFlags {
		if !flags[f] {
			t.Errorf("fileFlags names --%s, which is no flag of wsbridge serve", f)
		}
	}
	for _, l := range listeners {
		if !flags[l.flag] {
			t.Errorf("listeners names --%s, which is no flag of wsbridge serve", l.flag)
		}
	}
}

func TestListenAddressesMatchContainerPorts(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		c := o.container(t)
		cfg := effectiveConfig(t, c)
		// The probes and the scrapers need the admin listener (see
		// TestProbesAndTermination): it must be on.
		for _, l := range listeners {
			port := listenPort(t, cfg, l.flag)
			cp := containerPort(t, c, l.port)
			if port != cp.ContainerPort {
				t.Errorf("effective --%s %q, but container port %s is %d", l.flag, cfg[l.flag], l.port, cp.ContainerPort)
			}
			if cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP {
				t.Errorf("container port %s protocol %s", l.port, cp.Protocol)
			}
		}
		if len(c.Ports) != len(listeners) {
			t.Errorf("container ports %v: want exactly one per listener (%v)", c.Ports, listeners)
		}
		// /metrics is on the admin listener only.
		ann := o.dep.Spec.Template.Annotations
		if port, ok := ann["prometheus.io/port"]; ok && port != strconv.Itoa(int(containerPort(t, c, "admin").ContainerPort)) {
			t.Errorf("prometheus.io/port %s is not the admin port", port)
		}
	})
}

// httpProbes returns the readiness and liveness probes, which must be HTTP
// GETs.
func httpProbes(t *testing.T, c *corev1.Container) (readiness, liveness *corev1.HTTPGetAction) {
	t.Helper()
	get := func(what string, p *corev1.Probe) *corev1.HTTPGetAction {
		if p == nil {
			t.Fatalf("no %s", what)
		}
		h := p.ProbeHandler
		if h.HTTPGet == nil || h.GRPC != nil || h.Exec != nil || h.TCPSocket != nil {
			t.Fatalf("%s: want an HTTP GET probe only, got %+v", what, h)
		}
		return h.HTTPGet
	}
	return get("readinessProbe", c.ReadinessProbe), get("livenessProbe", c.LivenessProbe)
}

func TestProbesAndTermination(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		c := o.container(t)
		cfg := effectiveConfig(t, c)
		// The kubelet probes in plain HTTP and sends no token: the admin
		// listener, which asks for neither whatever --tls-cert and
		// --auth-all ask of the client ports, is the place for them.
		if cfg["admin-addr"] == "" {
			t.Fatal("no --admin-addr: the probes need the admin listener")
		}
		adminPort := listenPort(t, cfg, "admin-addr")
		readiness, liveness := httpProbes(t, c)
		for _, p := range []struct {
			what string
			get  *corev1.HTTPGetAction
		}{{"readinessProbe", readiness}, {"livenessProbe", liveness}} {
			if cp := portOf(c, p.get.Port); cp == nil || cp.ContainerPort != adminPort {
				t.Errorf("%s: port %s, want the admin listener's (%d)", p.what, p.get.Port.String(), adminPort)
			}
			if p.get.Scheme != "" && p.get.Scheme != corev1.URISchemeHTTP {
				t.Errorf("%s: scheme %s, but the admin listener speaks plain HTTP", p.what, p.get.Scheme)
			}
			if p.get.Host != "" {
				t.Errorf("%s: host %q, want the pod's IP (empty)", p.what, p.get.Host)
			}
			if !strings.HasPrefix(p.get.Path, "/") {
				t.Errorf("%s: path %q", p.what, p.get.Path)
			}
		}
		// What each path answers is checked on the binary by
		// TestProbesThroughABackendOutage.
		if readiness.Path == liveness.Path {
			t.Errorf("readiness and liveness probe the same path %s", readiness.Path)
		}

		// preStop: the native sleep (distroless has no shell for exec).
		lc := c.Lifecycle
		if lc == nil || lc.PreStop == nil || lc.PreStop.Sleep == nil {
			t.Fatal("no lifecycle.preStop.sleep")
		}
		if lc.PreStop.Exec != nil || lc.PreStop.HTTPGet != nil {
			t.Error("preStop must be the sleep action alone")
		}
		sleep := time.Duration(lc.PreStop.Sleep.Seconds) * time.Second
		if sleep <= 0 {
			t.Errorf("preStop sleep %v", sleep)
		}

		delay, grace := shutdownTimes(t, cfg)
		tgps := ptrOr(o.dep.Spec.Template.Spec.TerminationGracePeriodSeconds, corev1.DefaultTerminationGracePeriodSeconds)
		budget := time.Duration(tgps) * time.Second
		if need := sleep + delay + grace + terminationMargin; budget < need {
			t.Errorf("terminationGracePeriodSeconds %d (%v) < preStop sleep %v + shutdown delay %v + shutdown grace %v + margin %v",
				tgps, budget, sleep, delay, grace, terminationMargin)
		}
	})
}

// TestFileFlagsAreMounted checks that every file the gateway is told to read
// is in a volume the pod mounts: the image has none of them, and its root
// filesystem is read-only.
func TestFileFlagsAreMounted(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		c := o.container(t)
		pod := o.dep.Spec.Template.Spec
		for _, m := range c.VolumeMounts {
			if !slices.ContainsFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) {
				t.Errorf("volumeMount %s names no volume of the pod", m.Name)
			}
			if !m.ReadOnly {
				t.Errorf("volumeMount %s is writable: the gateway writes no file", m.Name)
			}
		}
		cfg := effectiveConfig(t, c)
		files := 0
		for _, flag := range fileFlags {
			for path := range strings.SplitSeq(cfg[flag], ",") {
				if path == "" {
					continue
				}
				files++
				vol, key, err := mountedFile(o, c, path)
				if err != nil {
					t.Errorf("--%s %s: %v", flag, path, err)
					continue
				}
				if vol.Secret == nil {
					continue
				}
				// A Secret the source renders must hold the key; one it does
				// not render is the user's to create.
				if s := o.secret(vol.Secret.SecretName); s != nil {
					if _, ok := secretData(s, key); !ok {
						t.Errorf("--%s %s: Secret %s has no key %q", flag, path, s.Name, key)
					}
				} else {
					t.Logf("--%s %s: from Secret %s key %s, not rendered here", flag, path, vol.Secret.SecretName, key)
				}
			}
		}
		t.Logf("%d files from volumes", files)
	})
}

// mountedFile finds the volume a path in the container comes from and, for
// a Secret or ConfigMap volume, the key that is the file.
func mountedFile(o objects, c *corev1.Container, path string) (*corev1.Volume, string, error) {
	for _, m := range c.VolumeMounts {
		var rel string
		switch {
		case m.SubPath != "" && path == m.MountPath:
			rel = m.SubPath
		case m.SubPath == "" && strings.HasPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/"):
			rel = strings.TrimPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")
		default:
			continue
		}
		i := slices.IndexFunc(o.dep.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			return nil, "", fmt.Errorf("volumeMount %s names no volume", m.Name)
		}
		vol := &o.dep.Spec.Template.Spec.Volumes[i]
		var items []corev1.KeyToPath
		switch {
		case vol.Secret != nil:
			items = vol.Secret.Items
		case vol.ConfigMap != nil:
			items = vol.ConfigMap.Items
		}
		if len(items) == 0 {
			return vol, rel, nil
		}
		// With items, only those are files, each at its path.
		for _, it := range items {
			if it.Path == rel {
				return vol, it.Key, nil
			}
		}
		return nil, "", fmt.Errorf("volume %s has no item at %s", vol.Name, rel)
	}
	return nil, "", errors.New("in no mounted volume")
}

// secretData returns a Secret's value for key, from data or stringData.
func secretData(s *corev1.Secret, key string) ([]byte, bool) {
	if v, ok := s.StringData[key]; ok {
		return []byte(v), true
	}
	v, ok := s.Data[key]
	return v, ok
}

// shutdownTimes returns the effective --shutdown-delay (0 where the binary
// has no such flag) and --shutdown-grace: after SIGTERM the process serves
// on for the delay, then drains calls for up to the grace.
func shutdownTimes(t *testing.T, cfg map[string]string) (delay, grace time.Duration) {
	t.Helper()
	var err error
	if grace, err = time.ParseDuration(cfg["shutdown-grace"]); err != nil {
		t.Fatalf("effective shutdown-grace %q: %v", cfg["shutdown-grace"], err)
	}
	if v, ok := cfg["shutdown-delay"]; ok {
		if delay, err = time.ParseDuration(v); err != nil {
			t.Fatalf("effective shutdown-delay %q: %v", v, err)
		}
	}
	return delay, grace
}

// ---------------------------------------------------------------------------
// The Dockerfile.

type dfInstr struct {
	cmd, rest string
	line      int
}

type dfStage struct {
	image, name string
	instrs      []dfInstr
}

// all returns the arguments of each instruction cmd in the stage.
func (s dfStage) all(cmd string) []string {
	var out []string
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in.rest)
		}
	}
	return out
}

func (s dfStage) last(cmd string) string {
	all := s.all(cmd)
	if len(all) == 0 {
		return ""
	}
	return all[len(all)-1]
}

// parseDockerfile splits ../Dockerfile into stages of instructions, with
// continuation lines joined and comments dropped.
func parseDockerfile(t *testing.T) []dfStage {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var instrs []dfInstr
	var cur strings.Builder
	start := 0
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if body, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(body)
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(line)
		cmd, rest, _ := strings.Cut(cur.String(), " ")
		instrs = append(instrs, dfInstr{cmd: strings.ToUpper(cmd), rest: strings.TrimSpace(rest), line: start})
		cur.Reset()
	}
	var stages []dfStage
	for _, in := range instrs {
		if in.cmd == "FROM" {
			var words []string
			for _, w := range strings.Fields(in.rest) {
				if !strings.HasPrefix(w, "--") {
					words = append(words, w)
				}
			}
			if len(words) == 0 {
				t.Fatalf("Dockerfile:%d: FROM without an image", in.line)
			}
			st := dfStage{image: words[0]}
			if len(words) == 3 && strings.EqualFold(words[1], "AS") {
				st.name = words[2]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("Dockerfile:%d: %s before FROM", in.line, in.cmd)
			}
			continue
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
	}
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and a final one", len(stages))
	}
	return stages
}

// execForm parses an exec-form (JSON array) instruction argument.
func execForm(t *testing.T, what, rest string) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(rest), &v); err != nil {
		t.Fatalf("%s %s: not the exec (JSON) form, which distroless needs (no shell): %v", what, rest, err)
	}
	return v
}

// flagValue returns the value of --name in args ("--name v" or "--name=v").
func flagValue(args []string, name string) (string, bool) {
	val, found := "", false
	for i, a := range args {
		n, v, hasV := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || n != name {
			continue
		}
		if hasV {
			val, found = v, true
		} else if i+1 < len(args) {
			val, found = args[i+1], true
		}
	}
	return val, found
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	final := stages[len(stages)-1]

	// The build stage: the Go image of the go.mod's go version.
	var build *dfStage
	for i := range stages[:len(stages)-1] {
		if strings.HasPrefix(stages[i].image, "golang:") {
			build = &stages[i]
		}
	}
	if build == nil {
		t.Fatal("no golang: build stage")
	}
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goDirective := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	imageVersion := regexp.MustCompile(`^golang:(\d+\.\d+)`).FindStringSubmatch(build.image)
	if goDirective == nil || imageVersion == nil {
		t.Fatalf("cannot compare go.mod's go directive with %s", build.image)
	}
	if string(goDirective[1]) != imageVersion[1] {
		t.Errorf("build image %s, but go.mod says go %s", build.image, goDirective[1])
	}

	// go mod download in a layer of its own, before the source.
	modDownload, copyAll, copyMod := -1, -1, -1
	goBuild := ""
	args := map[string]int{}
	for i, in := range build.instrs {
		switch {
		case in.cmd == "RUN" && strings.Contains(in.rest, "go mod download") && modDownload < 0:
			modDownload = i
		case in.cmd == "RUN" && strings.Contains(in.rest, "go build"):
			goBuild = in.rest
			for _, m := range regexp.MustCompile(`\$\{?(\w+)\}?`).FindAllStringSubmatch(in.rest, -1) {
				if _, ok := args[m[1]]; !ok && m[1] != "CGO_ENABLED" {
					t.Errorf("Dockerfile:%d: go build uses $%s, which is no ARG of the stage (declared before it)", in.line, m[1])
				}
			}
		case in.cmd == "COPY" && slices.Contains(strings.Fields(in.rest), "go.mod"):
			copyMod = i
		case in.cmd == "COPY" && copyAll < 0 && regexp.MustCompile(`^\.\s`).MatchString(in.rest):
			copyAll = i
		case in.cmd == "ARG":
			name, _, _ := strings.Cut(in.rest, "=")
			args[name] = i
		}
	}
	if !(copyMod >= 0 && copyMod < modDownload && modDownload < copyAll) {
		t.Errorf("want COPY go.mod go.sum, then RUN go mod download, then COPY . (got indexes %d, %d, %d)", copyMod, modDownload, copyAll)
	}
	if goBuild == "" {
		t.Fatal("no RUN go build in the build stage")
	}
	cgoOff := strings.Contains(goBuild, "CGO_ENABLED=0")
	for _, env := range build.all("ENV") {
		if regexp.MustCompile(`(^|\s)CGO_ENABLED[= ]0(\s|$)`).MatchString(env) {
			cgoOff = true
		}
	}
	if !cgoOff {
		t.Error("the build stage does not set CGO_ENABLED=0 (a cgo binary does not run on distroless/static or scratch)")
	}
	for _, want := range []string{"-trimpath", "./cmd/wsbridge"} {
		if !strings.Contains(goBuild, want) {
			t.Errorf("go build lacks %s", want)
		}
	}
	stamped := map[string]string{}
	for _, m := range ldflagX.FindAllStringSubmatch(goBuild, -1) {
		stamped[m[1]] = m[2]
	}
	for _, sym := range []string{"main.version", "main.commit"} {
		if v, ok := stamped[sym]; !ok || !strings.Contains(v, "$") {
			t.Errorf("go build does not stamp %s from a build ARG (-X %s=${...}): %q", sym, sym, v)
		}
	}
	for _, arg := range []string{"VERSION", "COMMIT"} {
		if _, ok := args[arg]; !ok {
			t.Errorf("the build stage has no ARG %s", arg)
		}
	}

	// The final stage: distroless or scratch, non-root, exec form.
	if !strings.HasPrefix(final.image, "gcr.io/distroless/") && final.image != "scratch" {
		t.Errorf("final stage FROM %s: want distroless or scratch", final.image)
	}
	user := final.last("USER")
	if name, _, _ := strings.Cut(user, ":"); name == "" || name == "root" || name == "0" {
		t.Errorf("final stage USER %q: want a non-root user", user)
	}
	entry := execForm(t, "ENTRYPOINT", final.last("ENTRYPOINT"))
	cmd := execForm(t, "CMD", final.last("CMD"))
	if len(entry) != 1 {
		t.Fatalf("ENTRYPOINT %q: want the binary alone", entry)
	}
	copied := false
	for _, cp := range final.all("COPY") {
		f := strings.Fields(cp)
		if strings.HasPrefix(f[0], "--from=") && f[len(f)-1] == entry[0] {
			copied = true
		}
	}
	if !copied {
		t.Errorf("no COPY --from=... %s in the final stage", entry[0])
	}

	// The image's listeners: on every interface, and EXPOSEd.
	var listening []int32
	for _, l := range listeners {
		addr, ok := flagValue(cmd, l.flag)
		if !ok {
			// The admin listener is the Deployment's to open
			// (WSBRIDGE_ADMIN_ADDR): it serves without a token, so an image
			// run by hand should not.
			if l.flag != "admin-addr" {
				t.Errorf("CMD does not set --%s (the default listens on loopback only)", l.flag)
			}
			continue
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("CMD --%s %q: %v", l.flag, addr, err)
			continue
		}
		if host != "0.0.0.0" && host != "" && host != "::" {
			t.Errorf("CMD --%s %q: not every interface", l.flag, addr)
		}
		n, err := strconv.Atoi(port)
		if err != nil {
			t.Errorf("CMD --%s %q: %v", l.flag, addr, err)
		}
		listening = append(listening, int32(n))
	}
	var exposed []int32
	for _, e := range final.all("EXPOSE") {
		for _, p := range strings.Fields(e) {
			port, proto, _ := strings.Cut(p, "/")
			if proto != "" && !strings.EqualFold(proto, "tcp") {
				t.Errorf("EXPOSE %s: want TCP", p)
			}
			n, err := strconv.Atoi(port)
			if err != nil {
				t.Errorf("EXPOSE %s: %v", p, err)
			}
			exposed = append(exposed, int32(n))
		}
	}
	slices.Sort(exposed)
	slices.Sort(listening)
	if !slices.Equal(exposed, listening) {
		t.Errorf("EXPOSE %v, but CMD listens on %v", exposed, listening)
	}
}

// TestDeploymentRunsTheImage checks the container against the image: the
// image's ENTRYPOINT runs, and the args, which replace its CMD, repeat it
// (listen addresses aside: their ports are the source's to choose, checked
// by TestListenAddressesMatchContainerPorts) before any flag they add.
func TestDeploymentRunsTheImage(t *testing.T) {
	final := parseDockerfile(t)
	image := final[len(final)-1]
	entry := execForm(t, "ENTRYPOINT", image.last("ENTRYPOINT"))
	cmd := execForm(t, "CMD", image.last("CMD"))
	isListenFlag := func(arg string) bool {
		return slices.ContainsFunc(listeners, func(l struct{ flag, port string }) bool { return arg == "--"+l.flag })
	}
	forEachSource(t, func(t *testing.T, o objects) {
		c := o.container(t)
		if len(c.Command) > 0 && !slices.Equal(c.Command, entry) {
			t.Errorf("container command %q overrides ENTRYPOINT %q", c.Command, entry)
		}
		if len(c.Args) == 0 {
			return // the image's CMD
		}
		if len(c.Args) < len(cmd) {
			t.Fatalf("container args %q are shorter than the image's CMD %q", c.Args, cmd)
		}
		for i := range cmd {
			if c.Args[i] != cmd[i] && !(i > 0 && isListenFlag(cmd[i-1])) {
				t.Errorf("container args %q do not begin with the image's CMD %q (differ at %q)", c.Args, cmd, c.Args[i])
				break
			}
		}
	})
}

// TestVersionStamp builds with the Dockerfile's -X symbols and checks that
// `wsbridge version` prints them: a symbol that no longer exists would be
// dropped silently by the linker.
func TestVersionStamp(t *testing.T) {
	bin := wsbridge(t)
	if len(binStamp) == 0 {
		t.Fatal("the Dockerfile stamps no -X symbol")
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("wsbridge version: %v\n%s", err, out)
	}
	for sym, v := range binStamp {
		if !strings.Contains(string(out), v) {
			t.Errorf("-X %s=%s is not in `wsbridge version`:\n%s", sym, v, out)
		}
	}
}

func TestDockerignoreKeepsBuildInputs(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	ignored := func(rel string) bool {
		t.Helper()
		m, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, p := range []string{".git/HEAD", ".bin/buf", "bin/wsbridge", "bench/bin/ghz", "browser/artifacts/dashboard.png"} {
		if !ignored(p) {
			t.Errorf(".dockerignore does not exclude %s", p)
		}
	}

	// What `go build ./cmd/wsbridge` reads must stay in the context.
	inputs := []string{"go.mod", "go.sum"}
	cmd := exec.Command("go", "list", "-deps", "-json=Dir,GoFiles,CgoFiles,EmbedFiles,Module", "./cmd/wsbridge")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			Dir                           string
			GoFiles, CgoFiles, EmbedFiles []string
			Module                        *struct{ Main bool }
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if p.Module == nil || !p.Module.Main {
			continue
		}
		rel, err := filepath.Rel(root, p.Dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range slices.Concat(p.GoFiles, p.CgoFiles, p.EmbedFiles) {
			inputs = append(inputs, filepath.Join(rel, f))
		}
	}
	if len(inputs) < 10 {
		t.Fatalf("go list found only %d build inputs", len(inputs))
	}
	for _, in := range inputs {
		if ignored(in) {
			t.Errorf(".dockerignore excludes %s, which the build needs", in)
		}
	}
}

// ---------------------------------------------------------------------------
// The binary, run as the manifest runs it.

// gateway is a wsbridge serve process.
type gateway struct {
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	stderr  *lineWriter
	addrs   listenAddrs

	// http trusts the gateway's certificate (if it has TLS); token is one
	// it accepts ("" without tokens).
	http  *http.Client
	https bool
	token string
}

// listenAddrs are the addresses in the "wsbridge listening" log line.
type listenAddrs struct{ GRPC, HTTP, Admin string }

// lineWriter collects stderr and reports the "wsbridge listening" line.
type lineWriter struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	partial   []byte
	listening chan listenAddrs
	sent      bool
}

var textAddr = regexp.MustCompile(`\b(grpc|http|admin)=(\S+)`)

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := w.partial[:i]
		w.partial = w.partial[i+1:]
		if w.sent || !bytes.Contains(line, []byte("wsbridge listening")) {
			continue
		}
		var rec listenAddrs
		if json.Unmarshal(line, &rec) != nil {
			for _, m := range textAddr.FindAllSubmatch(line, -1) {
				switch string(m[1]) {
				case "grpc":
					rec.GRPC = string(m[2])
				case "http":
					rec.HTTP = string(m[2])
				case "admin":
					rec.Admin = string(m[2])
				}
			}
		}
		w.listening <- rec
		w.sent = true
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// startGateway runs wsbridge with the container's args and env, plus
// extraEnv, listening on free loopback ports instead, and with local files
// standing in for those the pod's volumes would hold (podFiles).
func startGateway(t *testing.T, ctx context.Context, o objects, extraEnv map[string]string) *gateway {
	t.Helper()
	c := o.container(t)
	cfg := effectiveConfig(t, c)
	envMap := manifestEnv(c)
	maps.Copy(envMap, extraEnv)
	env := baseEnv()
	for k, v := range envMap {
		env = append(env, k+"="+v) // an empty value counts as unset
	}
	// The flag package keeps the last value, and flags win over the
	// environment: these override the container's addresses and files.
	args := slices.Clone(c.Args)
	for _, l := range listeners {
		if cfg[l.flag] != "" {
			args = append(args, "--"+l.flag, "127.0.0.1:0")
		}
	}
	g := &gateway{done: make(chan struct{}), stderr: &lineWriter{listening: make(chan listenAddrs, 1)}}
	files, roots, token := podFiles(t, o, c, cfg)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	g.http, g.https, g.token = &http.Client{Transport: tr}, roots != nil, token
	g.cmd = exec.Command(wsbridge(t), append(args, files...)...)
	g.cmd.Env = env
	g.cmd.Stderr = g.stderr
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.waitErr = g.cmd.Wait(); close(g.done) }()
	t.Cleanup(func() {
		select {
		case <-g.done:
		default:
			_ = g.cmd.Process.Kill()
			<-g.done
		}
		tr.CloseIdleConnections()
		if t.Failed() {
			t.Logf("wsbridge stderr:\n%s", g.stderr)
		}
	})
	select {
	case g.addrs = <-g.stderr.listening:
	case <-g.done:
		t.Fatalf("wsbridge exited before listening: %v\n%s", g.waitErr, g.stderr)
	case <-ctx.Done():
		t.Fatalf("wsbridge did not log that it listens\n%s", g.stderr)
	}
	if g.addrs.GRPC == "" || g.addrs.HTTP == "" || (cfg["admin-addr"] != "") != (g.addrs.Admin != "") {
		t.Fatalf("cannot read the listen addresses from\n%s", g.stderr)
	}
	return g
}

// podFiles stands in for the files the pod's volumes would hold, as flags
// that override the container's paths: a self-signed certificate for
// 127.0.0.1 for --tls-cert and --tls-key, and for --auth-token-file the
// tokens of the Secret the source renders, or a made-up one. It returns the
// flags, the certificate (nil without TLS) and a token (or "").
func podFiles(t *testing.T, o objects, c *corev1.Container, cfg map[string]string) (args []string, roots *x509.CertPool, token string) {
	t.Helper()
	dir := t.TempDir()
	var certPEM, keyPEM []byte
	for _, flag := range fileFlags {
		path := cfg[flag]
		if path == "" {
			continue
		}
		var content []byte
		switch flag {
		case "tls-cert", "tls-key":
			if roots == nil {
				certPEM, keyPEM, roots = selfSigned(t)
			}
			content = keyPEM
			if flag == "tls-cert" {
				content = certPEM
			}
		case "auth-token-file":
			content = []byte("made-up-token\n")
			if vol, key, err := mountedFile(o, c, path); err == nil && vol.Secret != nil {
				if s := o.secret(vol.Secret.SecretName); s != nil {
					content, _ = secretData(s, key)
				}
			}
			token, _, _ = strings.Cut(strings.TrimSpace(string(content)), "\n")
		default:
			t.Fatalf("--%s %s: the test has no stand-in for this file", flag, path)
		}
		local := filepath.Join(dir, flag)
		if err := os.WriteFile(local, content, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--"+flag, local)
	}
	return args, roots, token
}

// selfSigned returns a certificate for 127.0.0.1 and its key, in PEM, and
// a pool that trusts it.
func selfSigned(t *testing.T) (certPEM, keyPEM []byte, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "wsbridge deploy test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), roots
}

// adminGet is what the kubelet and Prometheus send: a plain GET to the admin
// listener, without a token.
func (g *gateway) adminGet(ctx context.Context, path string) (int, []byte, error) {
	return get(ctx, g.http, "http://"+g.addrs.Admin+path, "")
}

// clientGet is a client's GET on the HTTP port: TLS and a token if the
// gateway asks for them, so that the answer is about the path.
func (g *gateway) clientGet(ctx context.Context, path string) (int, []byte, error) {
	scheme := "http://"
	if g.https {
		scheme = "https://"
	}
	return get(ctx, g.http, scheme+g.addrs.HTTP+path, g.token)
}

// clientCall is a client's REST call of method on the HTTP port, with TLS
// and a token if the gateway asks for them.
func (g *gateway) clientCall(ctx context.Context, method, params string) (int, []byte, error) {
	scheme := "http://"
	if g.https {
		scheme = "https://"
	}
	return send(ctx, g.http, http.MethodPost, scheme+g.addrs.HTTP+"/v1/call/"+method, g.token, params)
}

func get(ctx context.Context, client *http.Client, url, token string) (int, []byte, error) {
	return send(ctx, client, http.MethodGet, url, token, "")
}

// send makes one request, with body as JSON if not empty.
func send(ctx context.Context, client *http.Client, method, url, token, body string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	return resp.StatusCode, answer, err
}

// needAdmin stops a test of the probes on a gateway without the admin
// listener (which TestProbesAndTermination reports).
func (g *gateway) needAdmin(t *testing.T) {
	t.Helper()
	if g.addrs.Admin == "" {
		t.Fatal("no admin listener (--admin-addr): the probes have no port to go to")
	}
}

// waitStatus polls the admin listener's path until it answers want, for up
// to 20 seconds (the demo backend's dial, and the failed dials that turn
// readiness off, take far less), so that one wrong path does not use up the
// test's time for the checks after it.
func waitStatus(ctx context.Context, g *gateway, path string, want int) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	last := "no answer"
	for {
		code, _, err := g.adminGet(ctx, path)
		switch {
		case err != nil && ctx.Err() != nil:
			// Cut short by the deadline: the answer before says more.
		case err != nil:
			last = err.Error()
		case code == want:
			return nil
		default:
			last = strconv.Itoa(code)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("GET %s on the admin listener: want %d, last %s", path, want, last)
		case <-tick.C:
		}
	}
}

// scrapePaths returns where scrapers read /metrics: the prometheus.io/path
// annotation, the ServiceMonitor's endpoints, or Prometheus's default.
func scrapePaths(o objects) []string {
	var paths []string
	ann := o.dep.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] == "true" {
		paths = append(paths, cmp.Or(ann["prometheus.io/path"], "/metrics"))
	}
	if o.sm != nil {
		for _, ep := range o.sm.Spec.Endpoints {
			paths = append(paths, cmp.Or(ep.Path, "/metrics"))
		}
	}
	if len(paths) == 0 {
		paths = []string{"/metrics"}
	}
	slices.Sort(paths)
	return slices.Compact(paths)
}

// TestBinaryServesTheManifestsProbesAndMetrics runs wsbridge with the
// container's args and environment (but the embedded demo backend instead
// of WSBRIDGE_BACKEND, loopback ports, and local files for the volumes'):
// the probes' paths must answer 200 on the admin listener, as the kubelet
// asks (plain HTTP, no token), the HPA's Pods metrics must be on the
// scrapers' path there, none of these may be served on the client port,
// and SIGTERM must end the process cleanly within the shutdown grace.
func TestBinaryServesTheManifestsProbesAndMetrics(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		c := o.container(t)
		cfg := effectiveConfig(t, c)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()

		// WSBRIDGE_DEMO (with no WSBRIDGE_BACKEND) starts the embedded demo
		// backend.
		g := startGateway(t, ctx, o, map[string]string{"WSBRIDGE_BACKEND": "", "WSBRIDGE_DEMO": "true"})
		if !strings.Contains(g.stderr.String(), "embedded demo backend") {
			t.Fatalf("the embedded demo backend did not start:\n%s", g.stderr)
		}
		g.needAdmin(t)
		readiness, liveness := httpProbes(t, c)
		for _, path := range []string{readiness.Path, liveness.Path} {
			if err := waitStatus(ctx, g, path, http.StatusOK); err != nil {
				t.Error(err)
			}
		}
		// The admin listener does not answer 200 to anything, so the 200s
		// above are the paths'.
		if code, _, err := g.adminGet(ctx, "/no-such-path"); err != nil || code != http.StatusNotFound {
			t.Errorf("GET /no-such-path on the admin listener: %d %v, want 404", code, err)
		}

		// The HPA's Pods metrics, where the scrapers read them.
		paths := scrapePaths(o)
		for _, path := range paths {
			code, body, err := g.adminGet(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			if code != http.StatusOK {
				t.Fatalf("GET %s on the admin listener: %d", path, code)
			}
			families := map[string]string{}
			for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) (\S+)$`).FindAllStringSubmatch(string(body), -1) {
				families[m[1]] = m[2]
			}
			if len(families) == 0 {
				t.Errorf("GET %s on the admin listener: no metrics", path)
			}
			if o.hpa == nil {
				continue
			}
			for _, m := range o.hpa.Spec.Metrics {
				if m.Type != autoscalingv2.PodsMetricSourceType {
					continue
				}
				name := m.Pods.Metric.Name
				if typ, ok := families[name]; !ok {
					t.Errorf("the HPA scales on %s, which %s does not export", name, path)
				} else if typ != "gauge" {
					t.Errorf("the HPA scales on %s, a %s; an average value wants a gauge", name, typ)
				}
			}
		}

		// None of it on the client port: with the admin listener on, clients
		// see no metrics, stats or health routes.
		for _, path := range append([]string{readiness.Path, liveness.Path}, paths...) {
			if code, _, err := g.clientGet(ctx, path); err != nil || code != http.StatusNotFound {
				t.Errorf("GET %s on the client HTTP port: %d %v, want 404 (admin listener only)", path, code, err)
			}
		}

		// SIGTERM (after the preStop sleep) drains and exits 0 within the
		// shutdown delay and grace, which the termination budget covers.
		delay, grace := shutdownTimes(t, cfg)
		start := time.Now()
		if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-g.done:
		case <-time.After(delay + grace + 5*time.Second):
			t.Fatalf("still running %v after SIGTERM (shutdown delay %v, grace %v)", time.Since(start), delay, grace)
		}
		if g.waitErr != nil {
			t.Errorf("exit after SIGTERM: %v", g.waitErr)
		}
		if d := time.Since(start); d > delay+grace {
			t.Errorf("shutdown took %v, more than the shutdown delay %v + grace %v", d, delay, grace)
		}
	})
}

// TestProbesThroughABackendOutage runs wsbridge as the container does
// with a backend that refuses connections. Lazy (no --backend-eager, the
// default), the readiness probe's path is 200 until a call finds the
// backend down (nothing says so before); eager, the dial at start does.
// Then it is 503 (the pod leaves the Service) with no more calls, and 200
// again once the backend is up, still with no call: a pod out of rotation
// gets no traffic, so nothing else could bring it back. The liveness
// probe's path stays 200 throughout (the kubelet does not restart pods for
// the backend's outage).
func TestProbesThroughABackendOutage(t *testing.T) {
	forEachSource(t, func(t *testing.T, o objects) {
		c := o.container(t)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()

		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		g := startGateway(t, ctx, o, map[string]string{"WSBRIDGE_BACKEND": "ws://" + addr + "/", "WSBRIDGE_DEMO": ""})
		g.needAdmin(t)
		readiness, liveness := httpProbes(t, c)
		if readiness.Path == liveness.Path {
			t.Fatalf("readiness and liveness probe the same path %s", readiness.Path)
		}
		live := func(when string) {
			t.Helper()
			if code, _, err := g.adminGet(ctx, liveness.Path); err != nil || code != http.StatusOK {
				t.Errorf("liveness %s %s: %d %v, want 200", liveness.Path, when, code, err)
			}
		}
		if effectiveConfig(t, c)["backend-eager"] != "true" {
			if err := waitStatus(ctx, g, readiness.Path, http.StatusOK); err != nil {
				t.Fatalf("before any call: %v", err)
			}
			// One call: the dial fails, the call is refused, and the
			// gateway redials in the background from then on.
			if code, body, err := g.clientCall(ctx, "echo", "[1]"); err != nil || code != http.StatusServiceUnavailable {
				t.Fatalf("a call with the backend down: %d %s %v, want 503", code, body, err)
			}
		}
		if err := waitStatus(ctx, g, readiness.Path, http.StatusServiceUnavailable); err != nil {
			t.Fatalf("with the backend found down: %v", err)
		}
		live("while the backend is down")

		// The backend comes up; no call is made.
		backend := exec.Command(wsbridge(t), "backend", "--listen", addr)
		backend.Env = baseEnv()
		var backendOut bytes.Buffer
		backend.Stdout, backend.Stderr = &backendOut, &backendOut
		if err := backend.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = backend.Process.Kill()
			_ = backend.Wait()
			if t.Failed() {
				t.Logf("wsbridge backend output:\n%s", backendOut.String())
			}
		})
		if err := waitStatus(ctx, g, readiness.Path, http.StatusOK); err != nil {
			t.Fatalf("after the backend came back, with no call: %v", err)
		}
		live("once the backend is back")
	})
}
