#!/usr/bin/env bash
# Builds a real HashiCorp Vault server (v1.13.0, MPL-2.0) from the Go module
# proxy in a scratch module outside the repository and caches the binary.
# `go install` refuses Vault's module (it has replace directives), so we build
# it as a dependency of a throwaway module. Prints the binary's path.
set -euo pipefail

VAULT_VERSION="${VAULT_VERSION:-v1.13.0}"
CACHE_DIR="${LANYARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lanyard}"
BIN="$CACHE_DIR/vault-$VAULT_VERSION/vault"

if [[ -x "$BIN" ]] && GODEBUG=x509negativeserial=1 "$BIN" version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$(dirname "$BIN")"
SCRATCH="$(mktemp -d "$CACHE_DIR/vault-build.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

cd "$SCRATCH"
cat > go.mod <<MOD
module lanyard.local/vaultbuild

go 1.24

// Vault 1.13's dependencies parse a CA certificate with a negative serial
// number at start-up, which current Go rejects unless this is set.
godebug x509negativeserial=1
MOD
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "github.com/hashicorp/vault/command"
GO
echo "building vault $VAULT_VERSION in $SCRATCH (takes several minutes once)" >&2
GOFLAGS=-mod=mod go get "github.com/hashicorp/vault@$VAULT_VERSION" >&2
GOFLAGS=-mod=mod go build -trimpath -o "$BIN.tmp" github.com/hashicorp/vault >&2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
