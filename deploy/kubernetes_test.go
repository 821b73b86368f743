package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
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

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
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

	// What the deployment is expected to use; the live tests check that the
	// binary registers these names.
	readinessService = ""
	livenessService  = "liveness"

	// terminationMargin is what terminationGracePeriodSeconds must leave
	// beyond the preStop sleep and the shutdown grace: the drain is bounded
	// by the grace, closing the backend link and exiting come after it.
	terminationMargin = time.Second
)

// The manifest files and the objects they must hold.
var manifestFiles = []struct {
	file, apiVersion, kind string
	new                    func() any
}{
	{"deployment.yaml", "apps/v1", "Deployment", func() any { return new(appsv1.Deployment) }},
	{"service.yaml", "v1", "Service", func() any { return new(corev1.Service) }},
	{"pdb.yaml", "policy/v1", "PodDisruptionBudget", func() any { return new(policyv1.PodDisruptionBudget) }},
	{"hpa.yaml", "autoscaling/v2", "HorizontalPodAutoscaler", func() any { return new(autoscalingv2.HorizontalPodAutoscaler) }},
}

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

func typeMeta(obj any) metav1.TypeMeta {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.TypeMeta
	case *corev1.Service:
		return o.TypeMeta
	case *policyv1.PodDisruptionBudget:
		return o.TypeMeta
	case *autoscalingv2.HorizontalPodAutoscaler:
		return o.TypeMeta
	}
	panic(fmt.Sprintf("unexpected %T", obj))
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
			obj := mf.new()
			if err := decodeStrict(docs[0], obj); err != nil {
				t.Fatalf("strict decoding into %T: %v", obj, err)
			}
			tm := typeMeta(obj)
			if tm.APIVersion != mf.apiVersion || tm.Kind != mf.kind {
				t.Errorf("apiVersion/kind = %s/%s, want %s/%s", tm.APIVersion, tm.Kind, mf.apiVersion, mf.kind)
			}
			var meta struct {
				Metadata metav1.ObjectMeta `json:"metadata"`
			}
			if err := yaml.Unmarshal(docs[0], &meta); err != nil {
				t.Fatal(err)
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

// objects are the manifests as `kubectl apply -k deploy/kubernetes` renders
// them (kustomize in-process), decoded strictly.
type objects struct {
	dep *appsv1.Deployment
	svc *corev1.Service
	pdb *policyv1.PodDisruptionBudget
	hpa *autoscalingv2.HorizontalPodAutoscaler
}

func render(t *testing.T) objects {
	t.Helper()
	dir, err := filepath.Abs(manifestDir)
	if err != nil {
		t.Fatal(err)
	}
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", manifestDir, err)
	}
	var o objects
	seen := map[string]int{}
	for _, r := range resMap.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		kind := r.GetKind()
		seen[kind]++
		var obj any
		switch kind {
		case "Deployment":
			o.dep = new(appsv1.Deployment)
			obj = o.dep
		case "Service":
			o.svc = new(corev1.Service)
			obj = o.svc
		case "PodDisruptionBudget":
			o.pdb = new(policyv1.PodDisruptionBudget)
			obj = o.pdb
		case "HorizontalPodAutoscaler":
			o.hpa = new(autoscalingv2.HorizontalPodAutoscaler)
			obj = o.hpa
		default:
			t.Fatalf("kustomize rendered an unexpected %s %s", kind, r.GetName())
		}
		if err := decodeStrict(doc, obj); err != nil {
			t.Fatalf("rendered %s: strict decoding: %v", kind, err)
		}
	}
	for _, mf := range manifestFiles {
		if seen[mf.kind] != 1 {
			t.Fatalf("kustomize rendered %d %s objects, want 1", seen[mf.kind], mf.kind)
		}
	}
	return o
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

func TestKustomizeRenders(t *testing.T) {
	o := render(t)
	c := o.container(t)
	if c.Image == "" {
		t.Error("the container has no image")
	}
	t.Logf("image after kustomize: %s", c.Image)
}

func TestSelectorsMatchPodLabels(t *testing.T) {
	o := render(t)
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
	check("PodDisruptionBudget selector", o.pdb.Spec.Selector)
	check("Service selector", &metav1.LabelSelector{MatchLabels: o.svc.Spec.Selector})
	for i, tsc := range o.dep.Spec.Template.Spec.TopologySpreadConstraints {
		check(fmt.Sprintf("topologySpreadConstraints[%d]", i), tsc.LabelSelector)
	}
}

func TestHPATargetsTheDeployment(t *testing.T) {
	o := render(t)
	ref := o.hpa.Spec.ScaleTargetRef
	if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != o.dep.Name {
		t.Errorf("scaleTargetRef = %s %s %q, want apps/v1 Deployment %q", ref.APIVersion, ref.Kind, ref.Name, o.dep.Name)
	}
	minR := int32(1)
	if o.hpa.Spec.MinReplicas != nil {
		minR = *o.hpa.Spec.MinReplicas
	}
	if minR < 2 || minR > o.hpa.Spec.MaxReplicas {
		t.Errorf("replicas %d..%d: want at least 2 and min <= max", minR, o.hpa.Spec.MaxReplicas)
	}
	if r := o.dep.Spec.Replicas; r == nil || *r < minR || *r > o.hpa.Spec.MaxReplicas {
		t.Errorf("Deployment replicas %v outside the HPA's %d..%d", r, minR, o.hpa.Spec.MaxReplicas)
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
}

func TestPDBAllowsEvictions(t *testing.T) {
	o := render(t)
	spec := o.pdb.Spec
	if (spec.MinAvailable == nil) == (spec.MaxUnavailable == nil) {
		t.Fatal("set exactly one of minAvailable and maxUnavailable")
	}
	minR := int32(1)
	if o.hpa.Spec.MinReplicas != nil {
		minR = *o.hpa.Spec.MinReplicas
	}
	// An int budget that can never be met at the smallest scale blocks
	// every node drain.
	if v := spec.MinAvailable; v != nil && v.Type == intstr.Int && v.IntVal >= minR {
		t.Errorf("minAvailable %d >= minReplicas %d: no pod could ever be evicted", v.IntVal, minR)
	}
	if v := spec.MaxUnavailable; v != nil && v.Type == intstr.Int && v.IntVal < 1 {
		t.Errorf("maxUnavailable %d: no pod could ever be evicted", v.IntVal)
	}
}

func TestServiceTargetsContainerPorts(t *testing.T) {
	o := render(t)
	c := o.container(t)
	if o.svc.Spec.Type != "" && o.svc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("Service type %s, want ClusterIP", o.svc.Spec.Type)
	}
	grpcPort := containerPort(t, c, "grpc")
	wantAppProtocol := map[string]string{"grpc": "kubernetes.io/h2c", "http": "http"}
	if len(o.svc.Spec.Ports) != len(c.Ports) {
		t.Errorf("Service has %d ports, the container %d", len(o.svc.Spec.Ports), len(c.Ports))
	}
	for _, sp := range o.svc.Spec.Ports {
		var target *corev1.ContainerPort
		for i, cp := range c.Ports {
			if (sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal == cp.Name) ||
				(sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal == cp.ContainerPort) {
				target = &c.Ports[i]
			}
		}
		if target == nil {
			t.Errorf("Service port %s: targetPort %s is no container port", sp.Name, sp.TargetPort.String())
			continue
		}
		if sp.Protocol != target.Protocol && !(sp.Protocol == "" && target.Protocol == corev1.ProtocolTCP) {
			t.Errorf("Service port %s: protocol %s, container port %s", sp.Name, sp.Protocol, target.Protocol)
		}
		want := wantAppProtocol[target.Name]
		if got := ptrOr(sp.AppProtocol, ""); got != want {
			t.Errorf("Service port %s (to container port %s): appProtocol %q, want %q", sp.Name, target.Name, got, want)
		}
		if target.ContainerPort == grpcPort.ContainerPort && sp.Name != "grpc" && !strings.HasPrefix(sp.Name, "grpc-") {
			t.Errorf("Service port %s carries gRPC: name it grpc", sp.Name)
		}
	}
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func TestSecurityContext(t *testing.T) {
	o := render(t)
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
	norm := func(s string) string {
		var parts []string
		for p := range strings.SplitSeq(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		return strings.Join(parts, ",")
	}
	return norm(given) == norm(shown)
}

func TestArgsAndEnvAreServeFlags(t *testing.T) {
	o := render(t)
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
		// The binary ignores WSBRIDGE_* variables that are no flag's, so a
		// typo would go unnoticed: this is the check.
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
	// The kubelet's gRPC probes speak plain h2c and send no token.
	if cfg["tls-cert"] != "" {
		t.Error("--tls-cert is set: the kubelet's gRPC probes cannot use TLS")
	}
	if cfg["auth-all"] == "true" {
		t.Error("--auth-all is set: the kubelet's gRPC probes send no token")
	}

	// A misspelt variable must fail the check above: make sure the help
	// parsing does not accept anything.
	if _, ok := envFlag["WSBRIDGE_SHUTDOWN_GRACEFUL"]; ok {
		t.Error("serve --help parsing accepts an unknown variable")
	}
}

func TestListenAddressesMatchContainerPorts(t *testing.T) {
	o := render(t)
	c := o.container(t)
	cfg := effectiveConfig(t, c)
	for _, p := range []struct{ flag, port string }{{"grpc-addr", "grpc"}, {"http-addr", "http"}} {
		addr := cfg[p.flag]
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("effective --%s %q: %v", p.flag, addr, err)
			continue
		}
		if host != "" && host != "0.0.0.0" && host != "::" {
			t.Errorf("effective --%s %q: listens on %s only, unreachable from outside the pod (use 0.0.0.0)", p.flag, addr, host)
		}
		cp := containerPort(t, c, p.port)
		if port != strconv.Itoa(int(cp.ContainerPort)) {
			t.Errorf("effective --%s %q, but container port %s is %d", p.flag, addr, p.port, cp.ContainerPort)
		}
		if cp.Protocol != "" && cp.Protocol != corev1.ProtocolTCP {
			t.Errorf("container port %s protocol %s", p.port, cp.Protocol)
		}
	}
	if len(c.Ports) != 2 {
		t.Errorf("container ports %v: want exactly grpc and http", c.Ports)
	}
	ann := o.dep.Spec.Template.Annotations
	if port, ok := ann["prometheus.io/port"]; ok && port != strconv.Itoa(int(containerPort(t, c, "http").ContainerPort)) {
		t.Errorf("prometheus.io/port %s is not the http port", port)
	}
}

func TestProbesAndTermination(t *testing.T) {
	o := render(t)
	c := o.container(t)
	grpcPort := containerPort(t, c, "grpc").ContainerPort
	for _, p := range []struct {
		what    string
		probe   *corev1.Probe
		service string
	}{
		{"readinessProbe", c.ReadinessProbe, readinessService},
		{"livenessProbe", c.LivenessProbe, livenessService},
	} {
		if p.probe == nil {
			t.Errorf("no %s", p.what)
			continue
		}
		h := p.probe.ProbeHandler
		if h.GRPC == nil || h.HTTPGet != nil || h.Exec != nil || h.TCPSocket != nil {
			t.Errorf("%s: want a gRPC probe only, got %+v", p.what, h)
			continue
		}
		if h.GRPC.Port != grpcPort {
			t.Errorf("%s: port %d, but the grpc container port is %d", p.what, h.GRPC.Port, grpcPort)
		}
		if got := ptrOr(h.GRPC.Service, ""); got != p.service {
			t.Errorf("%s: service %q, want %q", p.what, got, p.service)
		}
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

	delay, grace := shutdownTimes(t, effectiveConfig(t, c))
	tgps := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if p := o.dep.Spec.Template.Spec.TerminationGracePeriodSeconds; p != nil {
		tgps = *p
	}
	budget := time.Duration(tgps) * time.Second
	if need := sleep + delay + grace + terminationMargin; budget < need {
		t.Errorf("terminationGracePeriodSeconds %d (%v) < preStop sleep %v + shutdown delay %v + shutdown grace %v + margin %v",
			tgps, budget, sleep, delay, grace, terminationMargin)
	}
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

	// Against the Deployment.
	o := render(t)
	c := o.container(t)
	if len(c.Command) > 0 && !slices.Equal(c.Command, entry) {
		t.Errorf("container command %q overrides ENTRYPOINT %q", c.Command, entry)
	}
	if len(c.Args) > 0 && !slices.Equal(c.Args, cmd) {
		t.Errorf("container args %q differ from the image's CMD %q", c.Args, cmd)
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
	var ports []int32
	for _, p := range c.Ports {
		ports = append(ports, p.ContainerPort)
	}
	slices.Sort(exposed)
	slices.Sort(ports)
	if !slices.Equal(exposed, ports) {
		t.Errorf("EXPOSE %v, container ports %v", exposed, ports)
	}
	for _, p := range []struct{ flag, port string }{{"grpc-addr", "grpc"}, {"http-addr", "http"}} {
		addr, ok := flagValue(cmd, p.flag)
		if !ok {
			t.Errorf("CMD does not set --%s (the default listens on loopback only)", p.flag)
			continue
		}
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("CMD --%s %q: %v", p.flag, addr, err)
			continue
		}
		if host != "0.0.0.0" && host != "" && host != "::" {
			t.Errorf("CMD --%s %q: not every interface", p.flag, addr)
		}
		if want := strconv.Itoa(int(containerPort(t, c, p.port).ContainerPort)); port != want {
			t.Errorf("CMD --%s port %s, container port %s is %s", p.flag, port, p.port, want)
		}
	}
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
	cmd       *exec.Cmd
	done      chan struct{}
	waitErr   error
	stderr    *lineWriter
	grpc, web string // listen addresses
}

// lineWriter collects stderr and reports the "wsbridge listening" line.
type lineWriter struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	partial   []byte
	listening chan [2]string
	sent      bool
}

var textAddr = regexp.MustCompile(`\b(grpc|http)=(\S+)`)

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
		var rec struct{ GRPC, HTTP string }
		if json.Unmarshal(line, &rec) != nil {
			for _, m := range textAddr.FindAllSubmatch(line, -1) {
				if string(m[1]) == "grpc" {
					rec.GRPC = string(m[2])
				} else {
					rec.HTTP = string(m[2])
				}
			}
		}
		w.listening <- [2]string{rec.GRPC, rec.HTTP}
		w.sent = true
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// startGateway runs wsbridge with the container's args (listening on free
// loopback ports instead) and env, plus extraEnv.
func startGateway(t *testing.T, ctx context.Context, c *corev1.Container, extraEnv map[string]string) *gateway {
	t.Helper()
	envMap := manifestEnv(c)
	maps.Copy(envMap, extraEnv)
	env := baseEnv()
	for k, v := range envMap {
		env = append(env, k+"="+v) // an empty value counts as unset
	}
	// The flag package keeps the last value: these override the manifest's
	// 0.0.0.0 addresses.
	args := append(slices.Clone(c.Args), "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	g := &gateway{
		cmd:    exec.Command(wsbridge(t), args...),
		done:   make(chan struct{}),
		stderr: &lineWriter{listening: make(chan [2]string, 1)},
	}
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
		if t.Failed() {
			t.Logf("wsbridge stderr:\n%s", g.stderr)
		}
	})
	select {
	case addrs := <-g.stderr.listening:
		g.grpc, g.web = addrs[0], addrs[1]
	case <-g.done:
		t.Fatalf("wsbridge exited before listening: %v\n%s", g.waitErr, g.stderr)
	case <-ctx.Done():
		t.Fatalf("wsbridge did not log that it listens\n%s", g.stderr)
	}
	if g.grpc == "" || g.web == "" {
		t.Fatalf("cannot read the listen addresses from\n%s", g.stderr)
	}
	return g
}

func healthClient(t *testing.T, addr string) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

// waitHealth polls Check until service reports want, or ctx ends.
func waitHealth(ctx context.Context, hc healthpb.HealthClient, service string, want healthpb.HealthCheckResponse_ServingStatus) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	last := "no answer"
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := hc.Check(cctx, &healthpb.HealthCheckRequest{Service: service})
		cancel()
		switch {
		case err != nil:
			last = err.Error()
		case resp.GetStatus() == want:
			return nil
		default:
			last = resp.GetStatus().String()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("health service %q: want %s, last %s", service, want, last)
		case <-tick.C:
		}
	}
}

// probeService returns the gRPC health service name a probe asks for.
func probeService(p *corev1.Probe) string {
	if p == nil || p.GRPC == nil {
		return "<not a gRPC probe>"
	}
	return ptrOr(p.GRPC.Service, "")
}

// TestBinaryServesTheManifestsProbesAndMetrics runs wsbridge with the
// manifest's args and environment (but the embedded demo backend instead of
// WSBRIDGE_BACKEND, and loopback ports): the probes' health services must
// report SERVING, the HPA's Pods metrics must be on /metrics, and SIGTERM
// must end the process cleanly within the shutdown grace.
func TestBinaryServesTheManifestsProbesAndMetrics(t *testing.T) {
	o := render(t)
	c := o.container(t)
	cfg := effectiveConfig(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// WSBRIDGE_DEMO (with no WSBRIDGE_BACKEND) starts the embedded demo
	// backend.
	g := startGateway(t, ctx, c, map[string]string{"WSBRIDGE_BACKEND": "", "WSBRIDGE_DEMO": "true"})
	if !strings.Contains(g.stderr.String(), "embedded demo backend") {
		t.Fatalf("the embedded demo backend did not start:\n%s", g.stderr)
	}
	hc := healthClient(t, g.grpc)
	for _, svc := range []string{probeService(c.ReadinessProbe), probeService(c.LivenessProbe)} {
		if err := waitHealth(ctx, hc, svc, healthpb.HealthCheckResponse_SERVING); err != nil {
			t.Error(err)
		}
	}
	// The health server knows only the names it registers: an unknown one
	// is NotFound, so the SERVING answers above are not a default.
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "no-such-service"}); status.Code(err) != codes.NotFound {
		t.Errorf("Check(no-such-service): %v, want NotFound", err)
	}

	// The HPA's Pods metrics, and the scrape annotations, on /metrics.
	path := o.dep.Spec.Template.Annotations["prometheus.io/path"]
	if path == "" {
		path = "/metrics"
	}
	resp, err := http.Get("http://" + g.web + path)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	families := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) (\S+)$`).FindAllStringSubmatch(string(body), -1) {
		families[m[1]] = m[2]
	}
	pods := 0
	for _, m := range o.hpa.Spec.Metrics {
		if m.Type != autoscalingv2.PodsMetricSourceType {
			continue
		}
		pods++
		name := m.Pods.Metric.Name
		if typ, ok := families[name]; !ok {
			t.Errorf("the HPA scales on %s, which %s does not export", name, path)
		} else if typ != "gauge" {
			t.Errorf("the HPA scales on %s, a %s; an average value wants a gauge", name, typ)
		}
	}
	if pods == 0 {
		t.Log("the HPA has no Pods metric")
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
}

// TestLivenessIgnoresBackendOutage runs wsbridge as the manifest does with
// a backend that refuses connections: readiness must turn NOT_SERVING (the
// pod leaves the Service) while liveness stays SERVING (the kubelet does
// not restart pods for the backend's outage).
func TestLivenessIgnoresBackendOutage(t *testing.T) {
	o := render(t)
	c := o.container(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "ws://" + ln.Addr().String() + "/"
	ln.Close()
	g := startGateway(t, ctx, c, map[string]string{
		"WSBRIDGE_BACKEND":       dead,
		"WSBRIDGE_BACKEND_EAGER": "true",
	})
	hc := healthClient(t, g.grpc)
	readiness, liveness := probeService(c.ReadinessProbe), probeService(c.LivenessProbe)
	if readiness == liveness {
		t.Fatalf("readiness and liveness probe the same health service %q", readiness)
	}
	if err := waitHealth(ctx, hc, readiness, healthpb.HealthCheckResponse_NOT_SERVING); err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: liveness})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("liveness %q is %s while the backend is down", liveness, resp.GetStatus())
	}
}
