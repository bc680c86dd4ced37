package codec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/lanyardhq/lanyard/broker"
)

// records is every type a store writes, filled by fill.
var records = []any{
	&broker.User{}, &broker.Client{}, &broker.Resource{}, &broker.Connection{}, &broker.Grant{},
	&broker.AuthCode{}, &broker.RefreshToken{}, &broker.DeviceCode{}, &broker.Session{},
	&broker.AuthRequest{}, &broker.PendingLink{}, &broker.AuditEvent{},
}

// fill sets every field of the struct v points to, recursively, with
// values that need escaping or precision: the decoders must agree on them.
func fill(v reflect.Value, seed int) {
	switch v.Kind() {
	case reflect.Pointer:
		fill(v.Elem(), seed)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			t := time.Date(2026, 11, 22, 3, 4, 5, 123456789+seed, time.FixedZone("X", 3600*(seed%5)))
			v.Set(reflect.ValueOf(t))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), seed+i)
			}
		}
	case reflect.String:
		v.SetString(fmt.Sprintf("s%d \"q\" \\ <&> \u2028 é 😀 \t", seed))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(-seed - 1))
	case reflect.Uint64:
		v.SetUint(1<<63 + uint64(seed))
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		fill(s.Index(0), seed+100)
		fill(s.Index(1), seed+200)
		v.Set(s)
	default:
		panic("fill: add kind " + v.Kind().String())
	}
}

// TestDecodeMatchesEncodingJSON: every record written by encoding/json
// (as the stores write them) decodes here to what encoding/json decodes,
// full and empty.
func TestDecodeMatchesEncodingJSON(t *testing.T) {
	for _, rec := range records {
		for _, full := range []bool{true, false} {
			name := fmt.Sprintf("%T/full=%v", rec, full)
			t.Run(name, func(t *testing.T) {
				in := reflect.New(reflect.TypeOf(rec).Elem())
				if full {
					fill(in, 1)
				}
				raw, err := json.Marshal(in.Interface())
				if err != nil {
					t.Fatal(err)
				}
				v1 := reflect.New(in.Type().Elem())
				v2 := reflect.New(in.Type().Elem())
				if err := json.Unmarshal(raw, v1.Interface()); err != nil {
					t.Fatal(err)
				}
				if err := Decode(raw, v2.Interface()); err != nil {
					t.Fatalf("Decode: %v\n%s", err, raw)
				}
				a, _ := json.Marshal(v1.Interface())
				b, _ := json.Marshal(v2.Interface())
				if !bytes.Equal(a, b) || !bytes.Equal(a, raw) {
					t.Errorf("decoded differently:\nstored:        %s\nencoding/json: %s\ncodec:         %s", raw, a, b)
				}
			})
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	type req struct {
		Token string `json:"token"`
		Tool  string `json:"tool"`
	}
	for _, c := range []struct {
		name   string
		body   string
		strict bool // rejected only by DecodeStrict
	}{
		{name: "duplicate member", body: `{"token":"a","token":"b"}`},
		{name: "invalid UTF-8", body: "{\"token\":\"\xff\"}"},
		{name: "trailing data", body: `{"token":"a"} {}`},
		{name: "two values", body: `{"token":"a"}{"token":"b"}`},
		{name: "not an object", body: `["a"]`},
		{name: "wrong type", body: `{"token":1}`},
		{name: "truncated", body: `{"token":"a"`},
		{name: "unknown member", body: `{"token":"a","scope":"x"}`, strict: true},
		{name: "member of other case", body: `{"Token":"a"}`, strict: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var r req
			if err := DecodeStrict([]byte(c.body), &r); err == nil {
				t.Errorf("DecodeStrict(%s) = nil error, decoded %+v", c.body, r)
			}
			err := Decode([]byte(c.body), &r)
			if c.strict && err != nil {
				t.Errorf("Decode(%s) = %v, want nil (only strict rejects it)", c.body, err)
			}
			if !c.strict && err == nil {
				t.Errorf("Decode(%s) = nil error", c.body)
			}
		})
	}
	var r req
	if err := DecodeStrict([]byte(`{"token":"a","tool":"t"}`), &r); err != nil || r.Token != "a" || r.Tool != "t" {
		t.Errorf("DecodeStrict of a good body = %+v, %v", r, err)
	}
}

// sampleGrant is a grant as consent stores it: ASCII identifiers, UTC
// times.
func sampleGrant(tb testing.TB) []byte {
	tb.Helper()
	now := time.Date(2026, 11, 22, 3, 4, 5, 123456789, time.UTC)
	raw, err := json.Marshal(broker.Grant{ID: "g_4f3c2a1b0e9d8c7b6a5f4e3d2c1b0a99", UserID: "u_0a1b2c3d4e5f60718293a4b5c6d7e8f9",
		ClientID: "https://agent.example.com/oauth/client-metadata.json", Resource: "https://mail.example.com/mcp",
		ResourceID: "r_9f8e7d6c5b4a", Scopes: []string{"mail.read", "mail.send"},
		ConnectionIDs: []string{"c_00112233445566778899aabbccddeeff", "c_ffeeddccbbaa99887766554433221100"},
		CreatedAt:     now, UpdatedAt: now, ExpiresAt: now.Add(90 * 24 * time.Hour), LastUsedAt: now})
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// BenchmarkDecode compares decoding a stored grant with encoding/json and
// with this package.
func BenchmarkDecode(b *testing.B) {
	raw := sampleGrant(b)
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var g broker.Grant
			if err := json.Unmarshal(raw, &g); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("codec", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var g broker.Grant
			if err := Decode(raw, &g); err != nil {
				b.Fatal(err)
			}
		}
	})
}
