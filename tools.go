//go:build deps

// This file pins the module's direct dependencies before code uses them, so
// that parallel work does not race on go.mod. It is never built.
package deps

import (
	_ "github.com/gorilla/mux"
	_ "github.com/hashicorp/vault/api"
	_ "github.com/hashicorp/vault/api/auth/approle"
	_ "github.com/lestrrat-go/jwx/v2/jwt"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "go.etcd.io/bbolt"
	_ "golang.org/x/crypto/bcrypt"
	_ "golang.org/x/oauth2"
	_ "golang.org/x/time/rate"
	_ "gopkg.in/yaml.v3"
)
