package jsonrpc

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestParseRequests(t *testing.T) {
	for _, tc := range []struct {
		in    string
		batch bool
		want  []Request
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"m","params":[1]}`, false, []Request{{ID: json.RawMessage(`1`), Method: "m", Params: json.RawMessage(`[1]`)}}},
		{` {"jsonrpc":"2.0","method":"n"}`, false, []Request{{Method: "n"}}},
		{`{"jsonrpc":"2.0","id":null,"method":"m","params":null}`, false, []Request{{ID: json.RawMessage(`null`), Method: "m"}}},
		{`{"jsonrpc":"2.0","id":"\u0061","method":"\u006d"}`, false, []Request{{ID: json.RawMessage(`"\u0061"`), Method: "m"}}},
		{`[]`, false, []Request{{Err: ErrEmptyBatch}}},
		{`[1,{"jsonrpc":"2.0","id":2,"method":"m"}]`, true, []Request{{Err: ErrNotObject}, {ID: json.RawMessage(`2`), Method: "m"}}},
		{`{"jsonrpc":"2.0","id":{},"method":"m"}`, false, []Request{{Err: ErrID}}},
		{`{"jsonrpc":"1.0","id":3,"method":"m"}`, false, []Request{{ID: json.RawMessage(`3`), Err: ErrVersion}}},
		{`{"jsonrpc":"2.0","id":3,"method":""}`, false, []Request{{ID: json.RawMessage(`3`), Err: ErrMethod}}},
		{`{"jsonrpc":"2.0","id":3,"Method":"m"}`, false, []Request{{ID: json.RawMessage(`3`), Err: ErrMethod}}},
		{`{"jsonrpc":"2.0","id":3,"method":"m","params":"x"}`, false, []Request{{ID: json.RawMessage(`3`), Err: ErrParams}}},
		{`{"jsonrpc":"2.0","id":3,`, false, []Request{{Err: ErrParse}}},
		{"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"m\",\"params\":[\"\xff\"]}", false, []Request{{Err: ErrNotUTF8}}},
		{"[{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"\xc3\x28\"}]", false, []Request{{Err: ErrNotUTF8}}},
	} {
		got, batch := ParseRequests([]byte(tc.in))
		if batch != tc.batch || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseRequests(%q) = %+v, %v\nwant %+v, %v", tc.in, got, batch, tc.want, tc.batch)
		}
	}
}

func TestIDKey(t *testing.T) {
	same := [][2]string{{`"0x1"`, `"\u0030x1"`}, {`"a"`, ` "a" `}, {`"\/"`, `"/"`}, {`7`, `7`}}
	for _, p := range same {
		if IDKey(json.RawMessage(p[0])) != IDKey(json.RawMessage(p[1])) {
			t.Errorf("%s and %s have different keys", p[0], p[1])
		}
	}
	differ := [][2]string{{`1`, `"1"`}, {`"0x1"`, `"0x2"`}, {`null`, `"null"`}}
	for _, p := range differ {
		if IDKey(json.RawMessage(p[0])) == IDKey(json.RawMessage(p[1])) {
			t.Errorf("%s and %s have the same key", p[0], p[1])
		}
	}
}

func TestAppendErrorKeepsEveryCode(t *testing.T) {
	for _, code := range []int64{0, -1, 1, -32000, -32700, 1 << 40} {
		out := AppendError(nil, json.RawMessage(`7`), &Error{Code: code, Message: "m", Data: json.RawMessage(`{"a":1}`)})
		var got struct {
			ID    int
			Error Error
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%s: %v", out, err)
		}
		if got.ID != 7 || got.Error.Code != code || got.Error.Message != "m" || string(got.Error.Data) != `{"a":1}` {
			t.Fatalf("code %d: %s", code, out)
		}
	}
}

func TestAppendErrorCapsTheMessage(t *testing.T) {
	out := AppendError(nil, nil, &Error{Code: 1, Message: strings.Repeat("é", 2000) + "\xff"})
	if !json.Valid(out) || len(out) > MaxMessageSize+100 {
		t.Fatalf("%d bytes, valid %v", len(out), json.Valid(out))
	}
	if !bytes.HasPrefix(out, []byte(`{"jsonrpc":"2.0","id":null,`)) {
		t.Fatalf("%.40s", out)
	}
}

func TestReply(t *testing.T) {
	for _, tc := range []struct {
		in      string
		result  string
		code    int64
		wantErr error
	}{
		{`{"jsonrpc":"2.0","id":1,"result":{"a":1}}`, `{"a":1}`, 0, nil},
		{`{"jsonrpc":"2.0","id":1,"result":null}`, `null`, 0, nil},
		{`{"jsonrpc":"2.0","id":1,"error":{"code":0,"message":"zero"}}`, ``, 0, nil},
		{`{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"x","data":null}}`, ``, -32601, nil},
		{`{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"m"}}`, ``, 0, ErrResultAndErr},
		{`{"jsonrpc":"2.0","id":1}`, ``, 0, ErrNoResultOrErr},
		{`{"jsonrpc":"1.0","id":1,"result":1}`, ``, 0, ErrBadVersion},
		{`{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"m"}}`, ``, 0, ErrBadErrorObj},
		{`{"jsonrpc":"2.0","id":1,"error":{"code":1}}`, ``, 0, ErrBadErrorObj},
	} {
		m := message(t, tc.in)
		res, e, err := m.Reply()
		if err != tc.wantErr {
			t.Errorf("%s: err %v, want %v", tc.in, err, tc.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if tc.result != "" && string(res) != tc.result {
			t.Errorf("%s: result %s", tc.in, res)
		}
		if tc.result == "" && (e == nil || e.Code != tc.code) {
			t.Errorf("%s: error %+v, want code %d", tc.in, e, tc.code)
		}
	}
}

// message parses a frame of one message.
func message(t *testing.T, frame string) Message {
	t.Helper()
	msgs, batch, err := ParseMessages(nil, []byte(frame))
	if err != nil || batch || len(msgs) != 1 || msgs[0].Err != nil {
		t.Fatalf("%s: %d messages, %v", frame, len(msgs), err)
	}
	return msgs[0]
}

func TestKind(t *testing.T) {
	for in, want := range map[string]Kind{
		`{"jsonrpc":"2.0","id":1,"result":1}`:          KindReply,
		`{"jsonrpc":"2.0","method":"tick"}`:            KindNotification,
		`{"jsonrpc":"2.0","id":null,"method":"tick"}`:  KindNotification,
		`{"jsonrpc":"2.0","id":1,"method":"echo"}`:     KindRequest,
		`{"jsonrpc":"2.0"}`:                            KindInvalid,
		`{"jsonrpc":"2.0","ID":1,"Method":"x","a":{}}`: KindInvalid,
	} {
		m := message(t, in)
		if got := m.Kind(); got != want {
			t.Errorf("%s: kind %d, want %d", in, got, want)
		}
	}
}

func TestGatewayID(t *testing.T) {
	for in, want := range map[string][3]any{
		`7`: {uint64(7), false, true}, `"7"`: {uint64(7), true, true}, `"\u0037"`: {uint64(7), true, true},
		`-1`: {uint64(0), false, false}, `1e3`: {uint64(0), false, false}, `18446744073709551616`: {uint64(0), false, false},
	} {
		id, wrong, ok := GatewayID(json.RawMessage(in))
		if ok != want[2].(bool) || (ok && (id != want[0].(uint64) || wrong != want[1].(bool))) {
			t.Errorf("GatewayID(%s) = %d, %v, %v", in, id, wrong, ok)
		}
	}
}

func TestBrokenFrameIDs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		// Cut off after the id: the id is trusted.
		{`{"jsonrpc":"2.0","id":7,"result":`, []string{"7"}},
		{`{"jsonrpc":"2.0","id":"7","result":{"a":`, []string{`"7"`}},
		{`{"jsonrpc":"2.0","result":{"id":5,"x":1},"id":7,"error":`, []string{"7"}},
		// A nested id is never the message's.
		{`{"jsonrpc":"2.0","result":{"id":5,"x":`, nil},
		{`{"jsonrpc":"2.0","result":[{"id":5}],"x":"\"id\":6",`, nil},
		{`{"jsonrpc":"2.0","error":{"code":1,"data":{"id":5}},"extra":`, nil},
		// A notification or request names no caller, wherever its id is.
		{`{"jsonrpc":"2.0","method":"sub","params":{"id":5,"subscription":"0x1","result":`, nil},
		{`{"jsonrpc":"2.0","id":5,"method":"echo","params":{`, nil},
		// A number cut off may be the start of a longer one.
		{`{"jsonrpc":"2.0","id":7`, nil},
		{`{"jsonrpc":"2.0","id":71,"result":1}`, []string{"71"}},
		// Two ids: no way to know which.
		{`{"id":1,"id":2,"result":`, nil},
		// An escaped key is the same key.
		{`{"jsonrpc":"2.0","\u0069d":9,"result":`, []string{"9"}},
		{`{"jsonrpc":"2.0","iD":9,"result":`, nil},
		// Batches: each element's own id.
		{`[{"jsonrpc":"2.0","id":1,"result":1},{"jsonrpc":"2.0","id":2,"result":{"id":3`, []string{"1", "2"}},
		{`[{"jsonrpc":"2.0","method":"t","params":{"id":4}},{"id":5,"result":[`, []string{"5"}},
		{"{\"jsonrpc\":\"2.0\",\"id\":8,\"result\":\"\xff\"}", []string{"8"}},
		{`garbage`, nil}, {``, nil}, {`{`, nil}, {`[`, nil}, {`"id":7,`, nil},
	} {
		var got []string
		for _, id := range BrokenFrameIDs([]byte(tc.in)) {
			got = append(got, string(id))
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("BrokenFrameIDs(%s) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestEncodersProduceValidJSON(t *testing.T) {
	n := AppendNotification(nil, "a\"b\xff", json.RawMessage(`{"x":1}`))
	r := AppendRequest(nil, 42, true, AppendString(nil, "m\n"), json.RawMessage(`[1]`))
	nr := AppendRequest(nil, 0, false, AppendString(nil, "m"), nil)
	if len(r) > RequestSize(AppendString(nil, "m\n"), json.RawMessage(`[1]`)) {
		t.Fatal("RequestSize is not a bound")
	}
	b := AppendBatch(nil, [][]byte{n, r, nr})
	for _, out := range [][]byte{n, r, nr, b, AppendBatch(nil, nil)} {
		if !json.Valid(out) {
			t.Fatalf("%s", out)
		}
	}
	if string(nr) != `{"jsonrpc":"2.0","method":"m"}` {
		t.Fatal(string(nr))
	}
}

func TestSubscriptionHelpers(t *testing.T) {
	for _, tc := range []struct {
		params, id, result string // "" for none
	}{
		{`{"subscription":"0x1","result":{"a":[1,"}"]}}`, `"0x1"`, `{"a":[1,"}"]}`},
		{` { "result" : 5 , "subscription" : 7 } `, `7`, `5`},
		{`{"subscription":-1.5e3,"result":null}`, `-1.5e3`, `null`},
		{`{"subscr\u0069ption":"a","result":[]}`, `"a"`, `[]`},
		// Not an id.
		{`{"subscription":{"id":1},"result":1}`, ``, `1`},
		{`{"subscription":null,"result":1}`, ``, `1`},
		{`{"subscription":true}`, ``, ``},
		// Names match exactly; nested members are not the params'.
		{`{"Subscription":"0x1","Result":1}`, ``, ``},
		{`{"result":{"subscription":"0x1","result":2}}`, ``, `{"subscription":"0x1","result":2}`},
		// Twice: which one is meant is unknown.
		{`{"subscription":"0x1","subscription":"0x2","result":1,"result":2}`, ``, ``},
		// Not an object, or not one.
		{`["0x1",1]`, ``, ``}, {`"subscription"`, ``, ``}, {``, ``, ``},
		{`{"subscription":"0x1","result":1} {}`, ``, ``},
		{`{"subscription":"0x1","result":{`, ``, ``},
	} {
		if got := SubscriptionID(json.RawMessage(tc.params)); string(got) != tc.id {
			t.Errorf("SubscriptionID(%s) = %s, want %s", tc.params, got, tc.id)
		}
		got, ok := SubscriptionResult(json.RawMessage(tc.params))
		if string(got) != tc.result || ok != (tc.result != "") {
			t.Errorf("SubscriptionResult(%s) = %s, %v; want %s", tc.params, got, ok, tc.result)
		}
		with := WithSubscriptionID(json.RawMessage(tc.params), json.RawMessage(`"client-1"`))
		want := tc.params
		if tc.id != "" {
			want = strings.Replace(tc.params, tc.id, `"client-1"`, 1)
		}
		if string(with) != want {
			t.Errorf("WithSubscriptionID(%s) = %s, want %s", tc.params, with, want)
		}
	}
}

func TestWithSubscriptionIDCopies(t *testing.T) {
	params := json.RawMessage(`{"subscription":"0x1","result":1}`)
	with := WithSubscriptionID(params[:len(params):len(params)], json.RawMessage(`2`))
	with[0] = ' '
	if string(params) != `{"subscription":"0x1","result":1}` || string(with) != ` "subscription":2,"result":1}` {
		t.Fatalf("params %s, with %s", params, with)
	}
}
