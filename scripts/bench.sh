#!/usr/bin/env bash
# `make bench`: builds lanyard, starts a real Vault dev server on a free
# loopback port (as scripts/test.sh does) and runs `lanyard bench` twice,
# with the credential cache and without it, each with its own Vault-direct
# baseline and ceiling; then the Go benchmarks of the hot path's pieces.
# Output goes to bench-out/ (report JSON, table, the server's CPU profile of
# the redeem run and its pprof top). Not part of `make test`.
#
# Size with BENCH_USERS (default 200), BENCH_DURATION (3s per scenario),
# BENCH_CONCURRENCY (64), BENCH_RATE (the open-loop rate of the first run,
# default 0.5x: half its closed-loop redeem throughput); BENCH_ARGS is passed
# on to `lanyard bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

LANYARD_VAULT_BIN="$(bash scripts/build-vault.sh)"
OUT="${BENCH_OUT:-bench-out}"
mkdir -p "$OUT"
source scripts/lib.sh
start_vault

go build -trimpath -o "$RUN_DIR/lanyard" ./cmd/lanyard
ARGS=(--users "${BENCH_USERS:-200}" --duration "${BENCH_DURATION:-3s}" --concurrency "${BENCH_CONCURRENCY:-64}"
  --vault-pid "$VAULT_PID")
# shellcheck disable=SC2206
EXTRA=(${BENCH_ARGS:-})

"$RUN_DIR/lanyard" bench "${ARGS[@]}" --rate "${BENCH_RATE:-0.5x}" "${EXTRA[@]}" --json "$OUT/cached.json" --cpuprofile "$OUT/redeem.pprof" | tee "$OUT/cached.txt"
"$RUN_DIR/lanyard" bench "${ARGS[@]}" "${EXTRA[@]}" --credential-cache-ttl=-1s --only ceiling,vault,redeem,exchange \
  --json "$OUT/uncached.json" | tee "$OUT/uncached.txt"
go tool pprof -top -nodecount=25 "$RUN_DIR/lanyard" "$OUT/redeem.pprof" >"$OUT/redeem-top.txt" 2>/dev/null || true
go tool pprof -top -cum -nodecount=40 "$RUN_DIR/lanyard" "$OUT/redeem.pprof" >"$OUT/redeem-top-cum.txt" 2>/dev/null || true

echo "bench: go test -bench (hot path pieces)" >&2
go test -run '^$' -bench 'CheckPolicy|AuthenticateResource|VerifyAccessToken|GrantLookup|Credential|Redeem' -benchtime 300ms ./broker/redeem/ | tee "$OUT/go-bench.txt"
go test -run '^$' -bench '^Benchmark(Sign|Verify)$' -benchtime 300ms ./broker/token/ | tee -a "$OUT/go-bench.txt"
go test -run '^$' -bench 'AuditAppend' -benchtime 300ms ./internal/bolt/ | tee -a "$OUT/go-bench.txt"
go test -run '^$' -bench 'Decode|Memo' -benchmem -benchtime 300ms ./internal/codec/ | tee -a "$OUT/go-bench.txt"
echo "bench: results in $OUT/" >&2
