# Thin wrappers; the logic lives in go test and the scripts under integration/.
GO ?= go
BIN := bin/cryptds

.PHONY: all build test unit lint integration demo bench fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/cryptds

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

# make test = lint + unit tests (+ integration when root and /dev/fuse exist,
# as in CI, where their absence is a failure, not a skip).
test: lint unit
	@if [ "$$(id -u)" = 0 ] && [ -c /dev/fuse ]; then $(MAKE) integration; \
	elif [ -n "$$CI" ]; then echo "CI: integration tests need root and /dev/fuse" >&2; exit 1; \
	else echo "integration tests skipped: need root and /dev/fuse"; fi

integration: build
	bash integration/run.sh

demo: build
	bash integration/demo.sh

bench:
	bash integration/bench.sh

fuzz:
	for f in FuzzParseHeader FuzzParsePolicy FuzzDecryptBlock FuzzOffsets; do \
		$(GO) test ./objcrypt -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-60s} -parallel 1 || exit 1; \
	done

clean:
	rm -rf bin
