package password

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/lanyardhq/lanyard/broker"
)

func TestHashVerify(t *testing.T) {
	p := broker.SecretString("correct horse battery staple")
	h, err := Hash(p, bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(h, p.Reveal()) {
		t.Fatal("hash contains the password")
	}
	if err := Verify(h, p); err != nil {
		t.Errorf("Verify(right) = %v, want nil", err)
	}
	if err := Verify(h, "correct horse battery stapler"); !errors.Is(err, ErrMismatch) {
		t.Errorf("Verify(wrong) = %v, want ErrMismatch", err)
	}
}

func TestCheckBounds(t *testing.T) {
	for _, p := range []string{"", "short", strings.Repeat("x", MaxLen+1)} {
		if _, err := Hash(broker.SecretString(p), 4); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("Hash(len %d) = %v, want ErrInvalid", len(p), err)
		}
	}
}

func TestDefaultCost(t *testing.T) {
	h, err := Hash("a long enough passphrase", 0)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := bcrypt.Cost([]byte(h)); err != nil || c != DefaultCost {
		t.Errorf("cost = %d, %v; want %d", c, err, DefaultCost)
	}
}
