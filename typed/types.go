package typed

import (
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
)

// Types resolves message and extension types by name: those of the
// descriptor sets first (as dynamicpb types, matching the messages the
// gateway builds), then the ones linked into the binary. protojson uses it
// for google.protobuf.Any, and error details use it too.
type Types struct {
	files *protoregistry.Files
	local *dynamicpb.Types
}

func newTypes(files *protoregistry.Files) *Types {
	return &Types{files: files, local: dynamicpb.NewTypes(files)}
}

// RangeExtensionsByMessage calls f for each extension of message, the
// linked-in ones first (server reflection lists them).
func (t *Types) RangeExtensionsByMessage(message protoreflect.FullName, f func(protoreflect.ExtensionType) bool) {
	seen := map[protoreflect.FullName]bool{}
	more := true
	protoregistry.GlobalTypes.RangeExtensionsByMessage(message, func(xt protoreflect.ExtensionType) bool {
		seen[xt.TypeDescriptor().FullName()] = true
		more = f(xt)
		return more
	})
	t.files.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		var walk func(xds protoreflect.ExtensionDescriptors, mds protoreflect.MessageDescriptors)
		walk = func(xds protoreflect.ExtensionDescriptors, mds protoreflect.MessageDescriptors) {
			for i := 0; more && i < xds.Len(); i++ {
				xd := xds.Get(i)
				if xd.ContainingMessage().FullName() == message && !seen[xd.FullName()] {
					if xt, err := t.local.FindExtensionByName(xd.FullName()); err == nil {
						more = f(xt)
					}
				}
			}
			for i := 0; more && i < mds.Len(); i++ {
				walk(mds.Get(i).Extensions(), mds.Get(i).Messages())
			}
		}
		walk(fd.Extensions(), fd.Messages())
		return more
	})
}

// FindMessageByName implements protoregistry.MessageTypeResolver.
func (t *Types) FindMessageByName(name protoreflect.FullName) (protoreflect.MessageType, error) {
	if mt, err := t.local.FindMessageByName(name); err == nil {
		return mt, nil
	}
	return protoregistry.GlobalTypes.FindMessageByName(name)
}

// FindMessageByURL implements protoregistry.MessageTypeResolver.
func (t *Types) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	if mt, err := t.local.FindMessageByURL(url); err == nil {
		return mt, nil
	}
	return protoregistry.GlobalTypes.FindMessageByURL(url)
}

// FindExtensionByName implements protoregistry.ExtensionTypeResolver.
func (t *Types) FindExtensionByName(name protoreflect.FullName) (protoreflect.ExtensionType, error) {
	if xt, err := t.local.FindExtensionByName(name); err == nil {
		return xt, nil
	}
	return protoregistry.GlobalTypes.FindExtensionByName(name)
}

// FindExtensionByNumber implements protoregistry.ExtensionTypeResolver.
func (t *Types) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	if xt, err := t.local.FindExtensionByNumber(message, field); err == nil {
		return xt, nil
	}
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}
