package main

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// keyLines parses `lanyard keys list` output: kid, alg and state per line.
func keyLines(t *testing.T, out string) [][3]string {
	t.Helper()
	var keys [][3]string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Split(line, "\t")
		if len(f) < 3 || strings.HasPrefix(line, "new signing key") {
			continue
		}
		keys = append(keys, [3]string{f[0], f[1], f[2]})
	}
	return keys
}

func TestKeysRotateListAndJWKS(t *testing.T) {
	dir := t.TempDir()
	code, out, stderr := run(t, nil, "", "keys", "list", "--data", dir)
	if code != 0 {
		t.Fatalf("keys list: exit %d\n%s%s", code, out, stderr)
	}
	before := keyLines(t, out)
	if len(before) != 1 || before[0][1] != "ES256" || before[0][2] != "active" {
		t.Fatalf("keys list on new data = %q; want one active ES256 key", out)
	}

	code, out, stderr = run(t, nil, "", "keys", "rotate", "--data", dir)
	if code != 0 || !strings.Contains(out, "new signing key ") {
		t.Fatalf("keys rotate: exit %d\n%s%s", code, out, stderr)
	}
	code, out, _ = run(t, nil, "", "keys", "list", "--data", dir)
	after := keyLines(t, out)
	if code != 0 || len(after) != 2 {
		t.Fatalf("keys list after rotate = %d %q; want two keys", code, out)
	}
	// The old key still signs; the new one is published but pending.
	if after[0][0] != before[0][0] || after[0][2] != "active" || after[1][2] != "pending" || after[1][0] == after[0][0] {
		t.Errorf("keys after rotate = %v; want the old key active and a new pending one", after)
	}
	for _, k := range after {
		if len(k[0]) != 43 {
			t.Errorf("key line %v: want a 43-character thumbprint kid", k)
		}
	}
	if strings.Contains(out, `"d"`) || strings.Contains(out, "{") {
		t.Errorf("keys list prints key material:\n%s", out)
	}

	in := start(t, nil, "dev", "--addr", "127.0.0.1:0", "--data", dir)
	status, body := get(t, in.url+"/jwks.json")
	if status != http.StatusOK {
		t.Fatalf("/jwks.json = %d %s", status, body)
	}
	var jwks struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal([]byte(body), &jwks); err != nil {
		t.Fatalf("/jwks.json: %v\n%s", err, body)
	}
	var kids []string
	for _, k := range jwks.Keys {
		kid, _ := k["kid"].(string)
		kids = append(kids, kid)
		for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
			if _, ok := k[private]; ok {
				t.Errorf("JWKS key %s has private member %q", kid, private)
			}
		}
		if k["use"] != "sig" || k["alg"] != "ES256" || k["kty"] != "EC" {
			t.Errorf("JWKS key %v: want use sig, alg ES256, kty EC", k)
		}
	}
	slices.Sort(kids)
	want := []string{after[0][0], after[1][0]}
	slices.Sort(want)
	if !slices.Equal(kids, want) {
		t.Errorf("JWKS kids = %v, want both keys %v", kids, want)
	}
	if code := in.stop(); code != 0 {
		t.Errorf("dev stop: exit %d", code)
	}
}

func TestKeysBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"keys"}, {"keys", "frobnicate"}, {"keys", "list", "extra", "--data", t.TempDir()}, {"keys", "rotate", "--nope"},
	} {
		code, _, stderr := run(t, nil, "", args...)
		if code != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("lanyard %v: exit %d, stderr %q; want 2 and one line", args, code, stderr)
		}
	}
	if code, out, _ := run(t, nil, "", "keys", "--help"); code != 0 || !strings.Contains(out, "Usage") {
		t.Errorf("keys --help: exit %d %q", code, out)
	}
}
