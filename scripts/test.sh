#!/usr/bin/env bash
# `make test`: installs what the tests need, builds (once) and starts a real
# Vault on a free loopback port, runs go vet, staticcheck and the race-enabled
# test suite, and stops every process it started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$(go env GOPATH)/bin:$PATH"
bash scripts/setup.sh
LANYARD_VAULT_BIN="$(bash scripts/build-vault.sh)"
export LANYARD_VAULT_BIN

source scripts/lib.sh
start_vault

echo "test: gofmt" >&2
unformatted="$(gofmt -l $(git ls-files '*.go'))"
if [[ -n "$unformatted" ]]; then echo "gofmt would change: $unformatted" >&2; exit 1; fi
echo "test: go vet" >&2
go vet ./...
echo "test: staticcheck" >&2
staticcheck ./...
echo "test: go test -race" >&2
# In the background, so that a TERM from CI reaches the trap (and the
# cleanup) at once instead of after the tests.
go test -race -count=1 -timeout 20m ./... &
GOTEST=$!
PIDS+=("$GOTEST")
wait "$GOTEST"
