package broker

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
)

// Redacted is what a secret-bearing value prints, logs and marshals as.
const Redacted = "[REDACTED]"

// SecretString is a single secret value (a password, a client secret, a
// token). It redacts itself in fmt, slog, JSON and text marshalling so a stray
// log line cannot leak it; call Reveal to get the value.
type SecretString string

// Reveal returns the secret value. Call it only where the value is used.
func (s SecretString) Reveal() string { return string(s) }

// String implements fmt.Stringer.
func (s SecretString) String() string { return redact(len(s)) }

// GoString implements fmt.GoStringer.
func (s SecretString) GoString() string { return s.String() }

// Format implements fmt.Formatter for every verb, including %x and %q.
func (s SecretString) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// LogValue implements slog.LogValuer.
func (s SecretString) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON implements json.Marshaler.
func (s SecretString) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText implements encoding.TextMarshaler (YAML, flags, map keys).
func (s SecretString) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func redact(n int) string {
	if n == 0 {
		return ""
	}
	return Redacted
}

// Secret is an upstream credential as the secret store holds it: a small set
// of named fields (for example "access_token", "refresh_token", "password").
// The zero Secret is empty. Secret redacts itself everywhere; Field and
// Fields reveal values.
type Secret struct {
	fields map[string]string
}

// NewSecret returns a Secret holding a copy of fields.
func NewSecret(fields map[string]string) Secret {
	return Secret{fields: maps.Clone(fields)}
}

// Field returns one field's value and whether it is set.
func (s Secret) Field(name string) (string, bool) {
	v, ok := s.fields[name]
	return v, ok
}

// Fields returns a copy of every field. It reveals the secret.
func (s Secret) Fields() map[string]string { return maps.Clone(s.fields) }

// Names returns the field names, sorted. Names are not secret.
func (s Secret) Names() []string { return slices.Sorted(maps.Keys(s.fields)) }

// Len reports how many fields the secret has.
func (s Secret) Len() int { return len(s.fields) }

// Equal reports whether two secrets hold the same fields and values.
func (s Secret) Equal(o Secret) bool { return maps.Equal(s.fields, o.fields) }

// String implements fmt.Stringer; it names the fields, never their values.
func (s Secret) String() string { return fmt.Sprintf("Secret%v%s", s.Names(), redact(len(s.fields))) }

// GoString implements fmt.GoStringer.
func (s Secret) GoString() string { return s.String() }

// Format implements fmt.Formatter for every verb.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalJSON implements json.Marshaler; the output names fields only.
func (s Secret) MarshalJSON() ([]byte, error) {
	out := make(map[string]string, len(s.fields))
	for k := range s.fields {
		out[k] = Redacted
	}
	return json.Marshal(out)
}

// MarshalText implements encoding.TextMarshaler.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// HashSecret is how Lanyard stores high-entropy secrets it issues or is
// given (authorization codes, refresh tokens, device codes, client and MCP
// server secrets): SHA-256, hex. It is only for values with at least 128
// bits of entropy; user passwords use bcrypt (internal/password).
func HashSecret(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// SecretMatches reports, in constant time, whether presented hashes to hash.
// An empty hash never matches.
func SecretMatches(hash, presented string) bool {
	got := HashSecret(presented)
	return hash != "" && subtle.ConstantTimeCompare([]byte(hash), []byte(got)) == 1
}
