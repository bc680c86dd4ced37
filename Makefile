# Lanyard. `make dev` starts an all-in-one instance; `make test` runs every
# test against real components (it installs and starts what it needs).
.PHONY: dev test build vault clean

dev:
	go run ./cmd/lanyard dev

test:
	bash scripts/test.sh

build:
	go build -trimpath -o bin/lanyard ./cmd/lanyard

# Builds (once) and caches the Vault server the tests use.
vault:
	bash scripts/build-vault.sh

clean:
	rm -rf bin .lanyard
