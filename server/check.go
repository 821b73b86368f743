package server

import (
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/typed"
)

// Check reports what New would refuse in opts (the backends' URLs, the
// subscription patterns, the descriptor sets and their mapping, the HTTP
// rules), opening no listener and dialling nothing: `wsbridge check`,
// the gateway's dry run, as nginx -t is nginx's.
func Check(opts Options) error {
	opts = opts.withDefaults()
	if err := bridge.Check(opts.Bridge); err != nil {
		return err
	}
	if len(opts.DescriptorSets) == 0 {
		return nil
	}
	api, err := typed.Load(opts.DescriptorSets, typed.LoadOptions{
		IsSubscribe: bridge.SubscribeMatcher(opts.Bridge),
		Reserved: func(name protoreflect.FullName) bool {
			switch string(name) {
			case wsbridgev1.BridgeService_ServiceDesc.ServiceName, wsbridgev1.StatsService_ServiceDesc.ServiceName,
				grpc_health_v1.Health_ServiceDesc.ServiceName:
				return true
			}
			return false
		},
	})
	if err != nil {
		return err
	}
	if opts.HTTPRules != "" {
		if _, err := loadHTTPRules(opts.HTTPRules, api); err != nil {
			return err
		}
	}
	return nil
}
