package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/wsbridge/wsbridge/bridge"
)

// sections are the parts of a --config file that are lists of settings
// rather than flags: backends with their own settings, and per-method
// rules. ff reads the flags; these are read here, strictly (an unknown
// key is an error naming it).
type sections struct {
	Backends []backendSection `yaml:"backends,omitempty"`
	Methods  []methodSection  `yaml:"methods,omitempty"`
}

// backendSection is one entry of backends: in a config file.
type backendSection struct {
	URL      string   `yaml:"url"`
	Headers  []string `yaml:"headers,omitempty"`
	Weight   int      `yaml:"weight,omitempty"`
	Priority int      `yaml:"priority,omitempty"`
	Conns    int      `yaml:"conns,omitempty"`
	CA       string   `yaml:"ca,omitempty"`
	Insecure bool     `yaml:"insecure,omitempty"`
}

// methodSection is one entry of methods: in a config file: what may be
// done with the calls to the methods that match pattern.
type methodSection struct {
	Pattern    string        `yaml:"pattern"`
	Retry      bool          `yaml:"retry,omitempty"`
	HedgeAfter time.Duration `yaml:"hedge_after,omitempty"`
	Dedup      bool          `yaml:"dedup,omitempty"`
	CacheTTL   time.Duration `yaml:"cache_ttl,omitempty"`
}

// sectionKeys are the config file's keys that sections reads (ff skips
// them).
var sectionKeys = []string{"backends", "methods"}

func isSectionKey(key string) bool {
	for _, k := range sectionKeys {
		if key == k || strings.HasPrefix(key, k+".") {
			return true
		}
	}
	return false
}

// readSections reads the sections of the config file at path ("": none).
func readSections(path string) (sections, error) {
	var s sections
	if path == "" {
		return s, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("config: %w", err)
	}
	var doc map[string]yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return s, fmt.Errorf("config %s: %w", path, err)
	}
	for _, key := range sectionKeys {
		node, ok := doc[key]
		if !ok {
			continue
		}
		var buf bytes.Buffer
		enc := yaml.NewEncoder(&buf)
		if err := enc.Encode(map[string]*yaml.Node{key: &node}); err != nil {
			return s, err
		}
		dec := yaml.NewDecoder(&buf)
		dec.KnownFields(true)
		if err := dec.Decode(&s); err != nil {
			return s, fmt.Errorf("config %s: %s: %w", path, key, err)
		}
	}
	return s, nil
}

// backendOptions turns the backends: section into options; a bad value is
// an error naming its entry and key.
func (s sections) backendOptions(path string) ([]bridge.BackendOptions, error) {
	var out []bridge.BackendOptions
	for i, be := range s.Backends {
		where := fmt.Sprintf("backends[%d] in %s", i, path)
		if err := bridge.CheckURL(be.URL); err != nil {
			return nil, fmt.Errorf("%s: url: %w", where, err)
		}
		header, err := parseHeaders(be.Headers)
		if err != nil {
			return nil, fmt.Errorf("%s: headers: %w", where, err)
		}
		switch {
		case be.Weight < 0:
			return nil, fmt.Errorf("%s: weight %d: must be 1 or more", where, be.Weight)
		case be.Conns < 0:
			return nil, fmt.Errorf("%s: conns %d: must be 1 or more", where, be.Conns)
		}
		bo := bridge.BackendOptions{URL: be.URL, Header: header, Weight: be.Weight, Priority: be.Priority, Conns: be.Conns, ID: be.id()}
		if len(header) == 0 {
			bo.Header = nil // the flags' --backend-header applies
		}
		if be.CA != "" || be.Insecure {
			if bo.HTTPClient, err = backendClient(be.CA, be.Insecure); err != nil {
				return nil, fmt.Errorf("%s: %w", where, err)
			}
		}
		out = append(out, bo)
	}
	return out, nil
}

// id names the backend across a reload (bridge.BackendOptions.ID): its
// URL and every setting but weight and priority, so that a reload
// changing those keeps its connections and one changing any other
// replaces it.
func (be backendSection) id() string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%q %q %d %q %t", be.URL, be.Headers, be.Conns, be.CA, be.Insecure))
	return hex.EncodeToString(sum[:])
}

// methodPolicies turns the methods: section into policies.
func (s sections) methodPolicies(path string) ([]bridge.MethodPolicy, error) {
	var out []bridge.MethodPolicy
	for i, m := range s.Methods {
		if m.Pattern == "" {
			return nil, fmt.Errorf("methods[%d] in %s: no pattern", i, path)
		}
		if m.HedgeAfter < 0 || m.CacheTTL < 0 {
			return nil, fmt.Errorf("methods[%d] in %s: durations must not be negative", i, path)
		}
		out = append(out, bridge.MethodPolicy{Pattern: m.Pattern, Retry: m.Retry, HedgeAfter: m.HedgeAfter, Dedup: m.Dedup, CacheTTL: m.CacheTTL})
	}
	return out, nil
}

// redacted is the sections as --print-config shows them: URLs and header
// values redacted.
func (s sections) redacted() sections {
	out := sections{Methods: s.Methods}
	for _, be := range s.Backends {
		be.URL = bridge.RedactURL(be.URL)
		be.Headers = redactSetting("backend-header", be.Headers)
		out.Backends = append(out.Backends, be)
	}
	return out
}

// appendYAML adds the sections to a config file's text (none: unchanged).
func (s sections) appendYAML(doc []byte) ([]byte, error) {
	if len(s.Backends) == 0 && len(s.Methods) == 0 {
		return doc, nil
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(s); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return append(doc, buf.Bytes()...), nil
}
