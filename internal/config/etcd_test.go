package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEtcdStore(t *testing.T) {
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const vault = `
secrets:
  backend: vault
  vault: {address: "https://vault.example:8200", token: "${VAULT_TOKEN}"}
`
	getenv := env(map[string]string{"VAULT_TOKEN": "hvs.x", "ETCD_PASSWORD": "hunter2-etcd"})

	t.Run("Valid", func(t *testing.T) {
		cfg, err := Parse([]byte(`issuer: https://l.example
store:
  backend: etcd
  etcd:
    endpoints: [https://e1:2379, https://e2:2379]
    username: lanyard
    password_file: `+pwFile+`
    ca_cert: /etc/etcd/ca.pem
`+vault), getenv)
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		e := cfg.Store.Etcd
		if e.Password.Reveal() != "s3cret" || e.PasswordFile != "" || e.Prefix != "/lanyard/" ||
			e.DialTimeout != 5*time.Second || e.RequestTimeout != 5*time.Second {
			t.Errorf("store.etcd = %+v", e)
		}
	})

	t.Run("EveryProblem", func(t *testing.T) {
		_, err := Parse([]byte(`issuer: https://l.example
store:
  backend: etcd
  etcd:
    endpoints: ["http://10.0.0.1:2379", "https://e2:2379", "etcd3"]
    prefix: "lanyard"
    dial_timeout: 0s
    request_timeout: -1s
    password: ${ETCD_PASSWORD}
    cert: /c.pem
    ca_cert: /ca.pem
secrets:
  backend: sealed
`), getenv)
		probs, ok := err.(Problems)
		if !ok {
			t.Fatalf("Parse: %v, want Problems", err)
		}
		all := strings.Join(probs, "\n")
		for _, want := range []string{
			`store.etcd.endpoints[2]: "etcd3" is not`,
			"store.etcd.endpoints: mix http and https",
			"store.etcd: ca_cert, cert and key need https endpoints",
			"store.etcd: set both cert and key",
			"store.etcd: set both username and password",
			"store.etcd: the password would cross the network in clear",
			`store.etcd.prefix: "lanyard" must start with /`,
			"store.etcd.dial_timeout: must be a positive duration",
			"store.etcd.request_timeout: must be a positive duration",
			"store.backend: etcd needs secrets.backend: vault",
		} {
			if !strings.Contains(all, want) {
				t.Errorf("problems lack %q:\n%s", want, all)
			}
		}
		if strings.Contains(all, "hunter2") {
			t.Errorf("problems quote the password:\n%s", all)
		}
	})

	t.Run("NoEndpoints", func(t *testing.T) {
		_, err := Parse([]byte("issuer: https://l.example\nstore: {backend: etcd}\n"+vault), getenv)
		if err == nil || !strings.Contains(err.Error(), "store.etcd.endpoints: list the etcd members") {
			t.Errorf("Parse: %v, want the missing endpoints named", err)
		}
	})

	t.Run("UnknownBackend", func(t *testing.T) {
		_, err := Parse([]byte("issuer: https://l.example\nstore: {backend: consul}\n"), getenv)
		if err == nil || !strings.Contains(err.Error(), `store.backend: "consul" is not one of bolt, etcd`) {
			t.Errorf("Parse: %v", err)
		}
	})
}
