# Shared by scripts/test.sh and scripts/bench.sh (sourced, not run): a run
# directory, process tracking with cleanup on exit (also on failure), free
# loopback ports, and a real Vault dev server.
# The caller sets LANYARD_VAULT_BIN before calling start_vault.

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/lanyard.XXXXXX")"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$RUN_DIR"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Ports below Linux's ephemeral range (32768-60999), so an outgoing
# connection cannot be holding the one we pick.
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 12000))
    if port_free "$p"; then echo "$p"; return; fi
  done
  echo "no free port found" >&2; return 1
}
wait_http() { # url seconds pid
  for _ in $(seq $(($2 * 10))); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || return 1 # it died (port taken?)
    sleep 0.1
  done
  return 1
}

# start_vault starts a Vault dev server on a free port and exports
# VAULT_ADDR, VAULT_TOKEN and VAULT_PID.
start_vault() {
  local port token
  for attempt in 1 2 3; do
    port="$(free_port)"
    token="dev-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    # HOME points into the run dir so the dev server's token file stays there.
    # GODEBUG: see build-vault.sh (for binaries cached before that setting).
    HOME="$RUN_DIR" GODEBUG=x509negativeserial=1 "$LANYARD_VAULT_BIN" server -dev -dev-listen-address="127.0.0.1:$port" \
      -dev-root-token-id="$token" >"$RUN_DIR/vault.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    if wait_http "http://127.0.0.1:$port/v1/sys/health" 30 "$pid"; then
      export VAULT_ADDR="http://127.0.0.1:$port" VAULT_TOKEN="$token" VAULT_PID="$pid"
      echo "vault dev server on $VAULT_ADDR (pid $pid)" >&2
      return 0
    fi
    echo "vault did not start (attempt $attempt):" >&2; tail -20 "$RUN_DIR/vault.log" >&2
    kill "$pid" 2>/dev/null || true
  done
  return 1
}
