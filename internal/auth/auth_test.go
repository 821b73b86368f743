package auth

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestTokenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte("# comment\nalpha\n\n  beta  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for tok, want := range map[string]bool{"alpha": true, "beta": true, "gamma": false, "": false, "alph": false, "# comment": false} {
		if got := f.Check(tok); got != want {
			t.Errorf("Check(%q) = %v", tok, got)
		}
	}
	// Rotation: the file changes, Check follows.
	f.reloadEvery = 0
	if err := os.WriteFile(path, []byte("gamma\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Second)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if !f.Check("gamma") || f.Check("alpha") {
		t.Fatal("the new token file was not picked up")
	}
	// An emptied file keeps the last good tokens.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	later = later.Add(time.Second)
	_ = os.Chtimes(path, later, later)
	if !f.Check("gamma") {
		t.Fatal("an empty token file locked everyone out")
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing file loaded")
	}
}

func TestBearerToken(t *testing.T) {
	for h, want := range map[string]string{"Bearer abc": "abc", "bearer  abc ": "abc", "Basic abc": "", "Bearer": "", "": ""} {
		got, ok := BearerToken(h)
		if got != want || ok != (want != "") {
			t.Errorf("BearerToken(%q) = %q %v", h, got, ok)
		}
	}
}
