// Package secrettest is the conformance suite of broker.SecretStore. Every
// implementation (vault, vault/sealed) runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		secrettest.Run(t, func(t *testing.T) broker.SecretStore { return newStore(t) })
//	}
//
// The suite checks the contract only through the interface: versions and
// check-and-set, the error sentinels (wrapped, matched with errors.Is),
// listing by owner, key validation, concurrency, context cancellation, and
// that a stored secret never prints its values.
package secrettest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/lanyardhq/lanyard/broker"
)

// Run runs the suite. newStore is called once per subtest and must return a
// store whose keys no other call can see (for example a fresh key prefix or
// a fresh database), cleaned up with t.Cleanup.
func Run(t *testing.T, newStore func(t *testing.T) broker.SecretStore) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s broker.SecretStore)
	}{
		{"RoundTrip", testRoundTrip},
		{"FieldValues", testFieldValues},
		{"CreateExisting", testCreateExisting},
		{"StaleVersion", testStaleVersion},
		{"CASAny", testCASAny},
		{"Missing", testMissing},
		{"DeleteThenGet", testDeleteThenGet},
		{"List", testList},
		{"InvalidKeys", testInvalidKeys},
		{"ConcurrentCAS", testConcurrentCAS},
		{"WrappedSentinels", testWrappedSentinels},
		{"CancelledContext", testCancelledContext},
		{"Redaction", testRedaction},
		{"Ping", testPing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
}

func key(owner, name string) broker.SecretKey { return broker.SecretKey{Owner: owner, Name: name} }

// put writes and fails the test on error.
func put(t *testing.T, s broker.SecretStore, k broker.SecretKey, fields map[string]string, cas int) int {
	t.Helper()
	v, err := s.Put(t.Context(), k, broker.NewSecret(fields), cas)
	if err != nil {
		t.Fatalf("Put(%s, cas=%d): %v", k, cas, err)
	}
	return v
}

// get reads and fails the test on error.
func get(t *testing.T, s broker.SecretStore, k broker.SecretKey) (broker.Secret, int) {
	t.Helper()
	sec, v, err := s.Get(t.Context(), k)
	if err != nil {
		t.Fatalf("Get(%s): %v", k, err)
	}
	return sec, v
}

// wantErr checks that err matches want with errors.Is and that its message
// does not contain any of secrets.
func wantErr(t *testing.T, what string, err, want error, secrets ...string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: got error %v, want one matching %v", what, err, want)
		return
	}
	for _, v := range secrets {
		if strings.Contains(err.Error(), v) {
			t.Errorf("%s: error message %q reveals a secret value", what, err)
		}
	}
}

func wantFields(t *testing.T, what string, got broker.Secret, want map[string]string) {
	t.Helper()
	if !got.Equal(broker.NewSecret(want)) {
		// Names only: values stay out of test logs too.
		t.Errorf("%s: got a secret with fields %v that differs from the one written (fields %v)",
			what, got.Names(), broker.NewSecret(want).Names())
	}
}

func testRoundTrip(t *testing.T, s broker.SecretStore) {
	k := key("alice", "github")
	v1 := map[string]string{"access_token": "gho_first", "refresh_token": "ghr_first"}
	if got := put(t, s, k, v1, broker.CASCreate); got != 1 {
		t.Errorf("first Put: version %d, want 1", got)
	}
	sec, ver := get(t, s, k)
	if ver != 1 {
		t.Errorf("Get after first Put: version %d, want 1", ver)
	}
	wantFields(t, "Get after first Put", sec, v1)

	v2 := map[string]string{"access_token": "gho_second"}
	if got := put(t, s, k, v2, 1); got != 2 {
		t.Errorf("second Put: version %d, want 2", got)
	}
	sec, ver = get(t, s, k)
	if ver != 2 {
		t.Errorf("Get after second Put: version %d, want 2", ver)
	}
	wantFields(t, "Get after second Put", sec, v2)
	if _, ok := sec.Field("refresh_token"); ok {
		t.Errorf("second Put replaces the secret, but a field of the first version survived")
	}
}

func testFieldValues(t *testing.T, s broker.SecretStore) {
	k := key("alice", "odd-values")
	fields := map[string]string{
		"empty":     "",
		"unicode":   "pässwörd ✓ 密码",
		"quotes":    `"it's" \ {json} <html> %s %v`,
		"newlines":  "line1\nline2\r\n\ttab",
		"long":      strings.Repeat("x", 8192),
		"with.dots": "v",
	}
	put(t, s, k, fields, broker.CASCreate)
	sec, _ := get(t, s, k)
	wantFields(t, "Get", sec, fields)
}

func testCreateExisting(t *testing.T, s broker.SecretStore) {
	k := key("alice", "api")
	put(t, s, k, map[string]string{"key": "original-value"}, broker.CASCreate)
	_, err := s.Put(t.Context(), k, broker.NewSecret(map[string]string{"key": "intruder-value"}), broker.CASCreate)
	wantErr(t, "Put CASCreate on an existing key", err, broker.ErrAlreadyExists, "original-value", "intruder-value")
	sec, ver := get(t, s, k)
	if ver != 1 {
		t.Errorf("version after rejected create: %d, want 1", ver)
	}
	wantFields(t, "value after rejected create", sec, map[string]string{"key": "original-value"})
}

func testStaleVersion(t *testing.T, s broker.SecretStore) {
	k := key("alice", "imap")
	put(t, s, k, map[string]string{"password": "one"}, broker.CASCreate)
	put(t, s, k, map[string]string{"password": "two"}, 1)
	for _, cas := range []int{1, 3, 42} {
		_, err := s.Put(t.Context(), k, broker.NewSecret(map[string]string{"password": "stale-write"}), cas)
		wantErr(t, fmt.Sprintf("Put with cas=%d when the version is 2", cas), err, broker.ErrConflict, "stale-write", "two")
	}
	sec, ver := get(t, s, k)
	if ver != 2 {
		t.Errorf("version after rejected writes: %d, want 2", ver)
	}
	wantFields(t, "value after rejected writes", sec, map[string]string{"password": "two"})

	// A positive version on an absent key is a conflict too.
	_, err := s.Put(t.Context(), key("alice", "absent"), broker.NewSecret(map[string]string{"a": "b"}), 1)
	wantErr(t, "Put with cas=1 on an absent key", err, broker.ErrConflict)
}

func testCASAny(t *testing.T, s broker.SecretStore) {
	k := key("bob", "token")
	if v := put(t, s, k, map[string]string{"t": "1"}, broker.CASAny); v != 1 {
		t.Errorf("CASAny on an absent key: version %d, want 1", v)
	}
	if v := put(t, s, k, map[string]string{"t": "2"}, broker.CASAny); v != 2 {
		t.Errorf("CASAny on an existing key: version %d, want 2", v)
	}
	sec, ver := get(t, s, k)
	if ver != 2 {
		t.Errorf("version: %d, want 2", ver)
	}
	wantFields(t, "value", sec, map[string]string{"t": "2"})
}

func testMissing(t *testing.T, s broker.SecretStore) {
	k := key("nobody", "nothing")
	_, _, err := s.Get(t.Context(), k)
	wantErr(t, "Get of a missing key", err, broker.ErrNotFound)
	wantErr(t, "Delete of a missing key", s.Delete(t.Context(), k), broker.ErrNotFound)
}

func testDeleteThenGet(t *testing.T, s broker.SecretStore) {
	k := key("carol", "slack")
	put(t, s, k, map[string]string{"t": "x"}, broker.CASCreate)
	put(t, s, k, map[string]string{"t": "y"}, 1)
	if err := s.Delete(t.Context(), k); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	_, _, err := s.Get(t.Context(), k)
	wantErr(t, "Get after Delete", err, broker.ErrNotFound)
	wantErr(t, "second Delete", s.Delete(t.Context(), k), broker.ErrNotFound)
	// Every version is gone: the key can be created again and starts over.
	if v := put(t, s, k, map[string]string{"t": "z"}, broker.CASCreate); v != 1 {
		t.Errorf("re-create after Delete: version %d, want 1", v)
	}
}

func testList(t *testing.T, s broker.SecretStore) {
	for _, name := range []string{"zeta", "alpha", "mid.dle", "Beta", "alpha-2"} {
		put(t, s, key("dave", name), map[string]string{"v": name}, broker.CASCreate)
	}
	put(t, s, key("erin", "alpha"), map[string]string{"v": "other"}, broker.CASCreate)
	put(t, s, key("dave2", "x"), map[string]string{"v": "prefix-sibling"}, broker.CASCreate)

	got, err := s.List(t.Context(), "dave")
	if err != nil {
		t.Fatalf("List(dave): %v", err)
	}
	want := []broker.SecretKey{key("dave", "Beta"), key("dave", "alpha"), key("dave", "alpha-2"),
		key("dave", "mid.dle"), key("dave", "zeta")}
	if !slices.Equal(got, want) {
		t.Errorf("List(dave) = %v, want %v", got, want)
	}

	if err := s.Delete(t.Context(), key("dave", "mid.dle")); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	got, err = s.List(t.Context(), "dave")
	if err != nil {
		t.Fatalf("List(dave) after Delete: %v", err)
	}
	if want := slices.Delete(slices.Clone(want), 3, 4); !slices.Equal(got, want) {
		t.Errorf("List(dave) after Delete = %v, want %v", got, want)
	}

	got, err = s.List(t.Context(), "frank")
	if err != nil {
		t.Fatalf("List of an owner with no secrets: %v", err)
	}
	if len(got) != 0 {
		t.Errorf("List(frank) = %v, want empty", got)
	}

	for _, owner := range []string{"", "../x", "a/b", "a\x00b"} {
		_, err := s.List(t.Context(), owner)
		wantErr(t, fmt.Sprintf("List(%q)", owner), err, broker.ErrInvalid)
	}
}

func testInvalidKeys(t *testing.T, s broker.SecretStore) {
	bad := []string{"", "../x", "..", ".", "a/b", "a\x00b", "a\nb", "tab\t", "a\x7f", " lead", "-lead",
		strings.Repeat("x", 129)}
	sec := broker.NewSecret(map[string]string{"v": "never-written"})
	for _, part := range bad {
		for _, k := range []broker.SecretKey{key(part, "ok"), key("ok", part)} {
			_, err := s.Put(t.Context(), k, sec, broker.CASAny)
			wantErr(t, fmt.Sprintf("Put(%q)", k), err, broker.ErrInvalid, "never-written")
			_, _, err = s.Get(t.Context(), k)
			wantErr(t, fmt.Sprintf("Get(%q)", k), err, broker.ErrInvalid)
			wantErr(t, fmt.Sprintf("Delete(%q)", k), s.Delete(t.Context(), k), broker.ErrInvalid)
		}
	}
	// Nothing was written anywhere an owner "ok" could see.
	got, err := s.List(t.Context(), "ok")
	if err != nil {
		t.Fatalf("List(ok): %v", err)
	}
	if len(got) != 0 {
		t.Errorf("List(ok) after rejected writes = %v, want empty", got)
	}
	_, err = s.Put(t.Context(), key("ok", "cas"), sec, -2)
	wantErr(t, "Put with cas=-2", err, broker.ErrInvalid)
}

func testConcurrentCAS(t *testing.T, s broker.SecretStore) {
	k := key("gina", "shared")
	put(t, s, k, map[string]string{"writer": "initial"}, broker.CASCreate)
	const n = 16
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		mu      sync.Mutex
		winners []int
		errs    []error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			v, err := s.Put(t.Context(), k, broker.NewSecret(map[string]string{"writer": fmt.Sprint(i)}), 1)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				if v != 2 {
					errs = append(errs, fmt.Errorf("writer %d won with version %d, want 2", i, v))
				}
				winners = append(winners, i)
				return
			}
			if !errors.Is(err, broker.ErrConflict) {
				errs = append(errs, fmt.Errorf("writer %d: got %v, want ErrConflict", i, err))
			}
		}()
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	if len(winners) != 1 {
		t.Fatalf("%d writers succeeded (%v), want exactly 1", len(winners), winners)
	}
	sec, ver := get(t, s, k)
	if ver != 2 {
		t.Errorf("version after the race: %d, want 2", ver)
	}
	wantFields(t, "value after the race", sec, map[string]string{"writer": fmt.Sprint(winners[0])})
}

func testWrappedSentinels(t *testing.T, s broker.SecretStore) {
	k := key("hal", "wrapped")
	put(t, s, k, map[string]string{"v": "wrapped-secret"}, broker.CASCreate)
	_, errExists := s.Put(t.Context(), k, broker.NewSecret(nil), broker.CASCreate)
	_, errConflict := s.Put(t.Context(), k, broker.NewSecret(nil), 7)
	_, _, errNotFound := s.Get(t.Context(), key("hal", "missing"))
	_, _, errInvalid := s.Get(t.Context(), key("hal", "../x"))
	for _, tc := range []struct {
		name      string
		err, want error
	}{
		{"exists", errExists, broker.ErrAlreadyExists},
		{"conflict", errConflict, broker.ErrConflict},
		{"not found", errNotFound, broker.ErrNotFound},
		{"invalid", errInvalid, broker.ErrInvalid},
	} {
		wrapped := fmt.Errorf("caller: %w", tc.err)
		wantErr(t, tc.name+" (wrapped by a caller)", wrapped, tc.want, "wrapped-secret")
		if tc.err != nil && tc.err.Error() == tc.want.Error() {
			t.Errorf("%s: error %q carries no context (operation, key)", tc.name, tc.err)
		}
		for _, other := range []error{broker.ErrNotFound, broker.ErrAlreadyExists, broker.ErrConflict,
			broker.ErrInvalid, broker.ErrUnavailable, broker.ErrTampered} {
			if other != tc.want && errors.Is(tc.err, other) {
				t.Errorf("%s: error %v also matches %v", tc.name, tc.err, other)
			}
		}
	}
}

func testCancelledContext(t *testing.T, s broker.SecretStore) {
	k := key("ivan", "ctx")
	put(t, s, k, map[string]string{"v": "1"}, broker.CASCreate)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Put(ctx, k, broker.NewSecret(map[string]string{"v": "2"}), broker.CASAny)
	wantErr(t, "Put", err, context.Canceled)
	_, _, err = s.Get(ctx, k)
	wantErr(t, "Get", err, context.Canceled)
	_, err = s.List(ctx, "ivan")
	wantErr(t, "List", err, context.Canceled)
	wantErr(t, "Delete", s.Delete(ctx, k), context.Canceled)
	wantErr(t, "Ping", s.Ping(ctx), context.Canceled)

	// Nothing changed.
	sec, ver := get(t, s, k)
	if ver != 1 {
		t.Errorf("version after cancelled calls: %d, want 1", ver)
	}
	wantFields(t, "value after cancelled calls", sec, map[string]string{"v": "1"})
}

func testRedaction(t *testing.T, s broker.SecretStore) {
	const canary = "canary-s3cr3t-value-7f3a"
	k := key("judy", "redact")
	put(t, s, k, map[string]string{"password": canary, "user": "judy"}, broker.CASCreate)
	sec, _ := get(t, s, k)
	if v, _ := sec.Field("password"); v != canary {
		t.Fatalf("Field(password) does not return the stored value")
	}

	outputs := map[string]string{
		"%v":  fmt.Sprintf("%v", sec),
		"%+v": fmt.Sprintf("%+v", sec),
		"%#v": fmt.Sprintf("%#v", sec),
		"%s":  fmt.Sprintf("%s", sec),
		"%q":  fmt.Sprintf("%q", sec),
		"%x":  fmt.Sprintf("%x", sec),
		"Sprint of a struct holding it": fmt.Sprintf("%+v", struct {
			S broker.Secret
			P *broker.Secret
		}{sec, &sec}),
	}
	js, err := json.Marshal(map[string]any{"secret": sec})
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	outputs["json.Marshal"] = string(js)
	var text, jsonLog bytes.Buffer
	slog.New(slog.NewTextHandler(&text, nil)).Info("msg", "secret", sec, "ptr", &sec)
	slog.New(slog.NewJSONHandler(&jsonLog, nil)).Info("msg", "secret", sec, slog.Any("any", sec))
	outputs["slog text"] = text.String()
	outputs["slog json"] = jsonLog.String()
	for how, out := range outputs {
		if strings.Contains(out, canary) {
			t.Errorf("%s of a stored secret contains its value: %s", how, out)
		}
	}
}

func testPing(t *testing.T, s broker.SecretStore) {
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping: %v", err)
	}
}
