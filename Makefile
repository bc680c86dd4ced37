# Lanyard. `make dev` starts an all-in-one instance; `make test` runs every
# test against real components (it installs and starts what it needs).
.PHONY: dev test build vault clean bench

dev:
	go run ./cmd/lanyard dev

test:
	bash scripts/test.sh

# `make bench`: the load harness (lanyard bench, small default size, a few
# minutes) against a real Vault, and the hot path's Go benchmarks; results in
# bench-out/. See BENCHMARKS.md. Not part of `make test`.
bench:
	bash scripts/bench.sh

build:
	go build -trimpath -o bin/lanyard ./cmd/lanyard

# Builds (once) and caches the Vault server the tests use.
vault:
	bash scripts/build-vault.sh

clean:
	rm -rf bin .lanyard bench-out
