# Thin wrappers; the logic lives in go test and the scripts under integration/.
GO ?= go
BIN := bin/cryptds

.PHONY: all build deps test unit lint integration libvirt-test demo bench fuzz clean install uninstall

# Install locations (DESTDIR is honoured). mount(8) looks for helpers in
# /sbin only, whatever PREFIX is.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= /sbin
UNITDIR ?= $(PREFIX)/lib/systemd/system
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
DOCDIR ?= $(PREFIX)/share/doc/cryptds
# The config directory the systemd unit reads (/etc/cryptds/NAME.toml).
CONFDIR ?= /etc/cryptds
# Every installed path, for uninstall and the install test.
INSTALLED = $(BINDIR)/cryptds $(SBINDIR)/mount.fuse.cryptds $(UNITDIR)/cryptds@.service \
	$(MANDIR)/man8/cryptds.8 $(BASHCOMPDIR)/cryptds $(ZSHCOMPDIR)/_cryptds $(DOCDIR)/cryptds.toml.example

all: build

# The commit, for `cryptds version` when the toolchain stamps no VCS
# information into the binary (GOFLAGS=-buildvcs=false).
GIT_COMMIT := $(shell git rev-parse HEAD 2>/dev/null)
GIT_MODIFIED := $(shell test -z "$$(git status --porcelain --untracked-files=no 2>/dev/null)" && echo false || echo true)
LDFLAGS := -X main.linkedCommit=$(GIT_COMMIT) -X main.linkedModified=$(GIT_MODIFIED)

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/cryptds

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

# The Debian packages the tests need (.ci/packages); installs only the
# missing ones (as root) and prints nothing when all are there.
deps:
	@bash .ci/deps

# make test = deps + lint + unit tests (+ integration and the libvirt tier when root and /dev/fuse
# exist, as in CI, where their absence is a failure, not a skip).
test: deps lint unit
	@if [ "$$(id -u)" = 0 ] && [ -c /dev/fuse ]; then $(MAKE) integration && $(MAKE) libvirt-test; \
	elif [ -n "$$CI" ]; then echo "CI: integration tests need root and /dev/fuse" >&2; exit 1; \
	else echo "integration tests skipped: need root and /dev/fuse"; fi

integration: build
	bash integration/run.sh

demo: build
	bash integration/demo.sh

bench:
	bash integration/bench.sh

fuzz:
	GO=$(GO) bash integration/fuzz.sh

install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(DOCDIR)
	install -d -m 0755 $(DESTDIR)$(CONFDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/cryptds
	ln -sf $(BINDIR)/cryptds $(DESTDIR)$(SBINDIR)/mount.fuse.cryptds
	sed 's|/usr/bin/cryptds|$(BINDIR)/cryptds|g' packaging/systemd/cryptds@.service >$(DESTDIR)$(UNITDIR)/cryptds@.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/cryptds@.service
	$(BIN) man >$(DESTDIR)$(MANDIR)/man8/cryptds.8
	$(BIN) completion bash >$(DESTDIR)$(BASHCOMPDIR)/cryptds
	$(BIN) completion zsh >$(DESTDIR)$(ZSHCOMPDIR)/_cryptds
	chmod 0644 $(DESTDIR)$(MANDIR)/man8/cryptds.8 $(DESTDIR)$(BASHCOMPDIR)/cryptds $(DESTDIR)$(ZSHCOMPDIR)/_cryptds
	install -m 0644 packaging/cryptds.toml.example $(DESTDIR)$(DOCDIR)/cryptds.toml.example

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null
	-rmdir $(DESTDIR)$(CONFDIR) 2>/dev/null # only if empty: configs are the operator's

# The libvirt tier: libvirtd runs a TCG guest from a dir pool on an
# encrypted cryptds mount (slow; needs libvirt-daemon-system, see .ci/run).
libvirt-test: build
	bash integration/libvirt.sh

clean:
	rm -rf bin
