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
	f, err := Load(path, nil)
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
	// Revocation bites: an emptied file, one with only comments, and a
	// deleted one accept no token; a file that comes back is read again.
	for _, content := range []string{"", "# gamma\n"} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		later = later.Add(time.Second)
		_ = os.Chtimes(path, later, later)
		if f.Check("gamma") || f.Tokens() != 0 {
			t.Fatalf("file %q still accepts a token", content)
		}
	}
	if err := os.WriteFile(path, []byte("delta\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	later = later.Add(time.Second)
	_ = os.Chtimes(path, later, later)
	if !f.Check("delta") {
		t.Fatal("the refilled file was not read")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if f.Check("delta") {
		t.Fatal("a deleted token file still accepts its last token")
	}
	if err := os.WriteFile(path, []byte("delta\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !f.Check("delta") {
		t.Fatal("the token file came back but is not read")
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing"), nil); err == nil {
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
