package jsonrpc

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Quantity reads a result as a non-negative integer: a JSON number
// without fraction or exponent, or a string holding a decimal or a "0x"
// hexadecimal quantity (Ethereum's encoding, eth_blockNumber's "0x1b4").
func Quantity(v json.RawMessage) (uint64, bool) {
	s := strings.TrimSpace(string(v))
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
		if hex, ok := strings.CutPrefix(s, "0x"); ok {
			n, err := strconv.ParseUint(hex, 16, 64)
			return n, err == nil && hex != ""
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}
