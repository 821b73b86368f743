// Package typedtest compiles .proto sources into descriptor sets, as `buf
// build -o` would, with protocompile: the typed package's tests, the
// gateway's tests of the typed face and the benchmark runner use it.
package typedtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// CompileSet compiles the files names, from sources (path -> text) or
// from the directories of importPaths (besides the protobuf's own
// well-known files), into a descriptor set file with every import
// included, and returns its path.
func CompileSet(t testing.TB, sources map[string]string, importPaths []string, names ...string) string {
	t.Helper()
	data, err := Compile(sources, importPaths, names...)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "set.binpb")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Compile is CompileSet's compilation: it returns the descriptor set's
// bytes.
func Compile(sources map[string]string, importPaths []string, names ...string) ([]byte, error) {
	c := protocompile.Compiler{Resolver: protocompile.WithStandardImports(protocompile.CompositeResolver{
		&protocompile.SourceResolver{Accessor: protocompile.SourceAccessorFromMap(sources)},
		&protocompile.SourceResolver{ImportPaths: importPaths},
	})}
	files, err := c.Compile(context.Background(), names...)
	if err != nil {
		return nil, err
	}
	set := &descriptorpb.FileDescriptorSet{}
	added := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if added[fd.Path()] {
			return
		}
		added[fd.Path()] = true
		for i := range fd.Imports().Len() {
			add(fd.Imports().Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	for _, f := range files {
		add(f)
	}
	return proto.Marshal(set)
}
