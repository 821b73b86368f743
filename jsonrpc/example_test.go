package jsonrpc_test

import (
	"encoding/json"
	"fmt"

	"github.com/wsbridge/wsbridge/jsonrpc"
)

// A gateway that gives each client its own subscription ids rewrites every
// notification: the backend's id says whose it is, and the client's id
// goes in its place; the event itself is not decoded.
func ExampleWithSubscriptionID() {
	params := json.RawMessage(`{"subscription":"0x9ce5","result":{"number":"0x1b4"}}`)
	clientIDs := map[string]json.RawMessage{jsonrpc.IDKey(json.RawMessage(`"0x9ce5"`)): json.RawMessage(`"0x1"`)}

	if backendID := jsonrpc.SubscriptionID(params); backendID != nil {
		params = jsonrpc.WithSubscriptionID(params, clientIDs[jsonrpc.IDKey(backendID)])
	}
	result, _ := jsonrpc.SubscriptionResult(params)
	fmt.Printf("%s\n%s\n", params, result)
	// Output:
	// {"subscription":"0x1","result":{"number":"0x1b4"}}
	// {"number":"0x1b4"}
}
