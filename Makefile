# mixmta — build, run, test, benchmark.
#   make build   daemon and every plugin into bin/
#   make run     build, then start a local 5-node Sphinx mixnet (configs/local-mixnet.yaml);
#                mail sent to 127.0.0.1:2525 lands in ./var/maildir
#   make run-single  one node without the mixnet (configs/local.yaml)
#   make test    install missing test peers (apt-get), build, run every test
#   make bench   benchmarks (Go benchmarks and bench/*.sh), figures on stdout
#   make fuzz    every fuzz target for FUZZTIME each (default 10m); not part of make test

GO      ?= go
BIN     := bin
CONFIG  ?= configs/local.yaml
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# Debian packages the tests start as real peers.
TEST_PKGS := swaks postfix inn2 dnsmasq-base tor torsocks libnet-ssleay-perl libio-socket-inet6-perl libnet-dns-perl dovecot-core dovecot-lmtpd python3-dkim gnupg openssl iproute2
GOTEST_TIMEOUT ?= 25m

.PHONY: build run run-single test test-deps bench fuzz proto fmt vet clean

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/ ./core/cmd/mixmta ./plugins/... ./sdk/examples/...

run: build
	@mkdir -p var
	./$(BIN)/mixmta mixnet run --dir var/mixnet --profile configs/local-mixnet.yaml --nodes 5 --authorities 3

run-single: build
	@mkdir -p var
	./$(BIN)/mixmta serve -c $(CONFIG)

# Installs only what is missing; needs root or sudo for apt-get.
test-deps:
	@missing=""; \
	for p in $(TEST_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing test peers:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  if [ -d /run/systemd/system ] && [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null; $$SUDO chmod +x /usr/sbin/policy-rc.d; fi; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends $$missing || \
	  { [ -f /etc/news/inn.conf ] && $$SUDO sed -i -E 's/^#?domain:.*/domain: example.test/' /etc/news/inn.conf && $$SUDO dpkg --configure -a; }; \
	fi

test: test-deps build
	$(GO) vet ./...
	$(GO) test -timeout $(GOTEST_TIMEOUT) -count=1 ./...

# Each script prints its figures; see bench/README.md.
bench: test-deps build
	@for s in bench/*.sh; do echo "=== $$s"; bash $$s || exit 1; done

# package:target for every Go fuzz target; seeds live beside each test.
FUZZTIME ?= 10m
FUZZ_TARGETS := ./core/internal/smtpd:FuzzSession ./plugins/sanitize:FuzzSanitize \
	./plugins/sphinx/internal/sphinx:FuzzUnwrap ./plugins/sphinx/internal/sphinx:FuzzParse \
	./plugins/sphinx:FuzzAssemble ./plugins/sphinx:FuzzParsePayload ./plugins/sphinx:FuzzMix \
	./core/internal/config:FuzzParse ./plugins/sphinx/internal/sphinx:FuzzUnwrapKEM \
	./plugins/mail2news:FuzzBuildArticle ./core/internal/smtpd:FuzzSessionInsideTLS \
	./plugins/sphinx/internal/sphinx:FuzzUnwrapKEMAuthenticated \
	./core/internal/directory:FuzzVerifyConsensus ./core/internal/directory:FuzzVote \
	./core/internal/directory:FuzzAuthorityRequest \
	./core/internal/smtpd:FuzzDotReader

fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; echo "=== $$name in $$pkg for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# Regenerate the plugin protocol (needs protoc, protoc-gen-go, protoc-gen-go-grpc).
proto:
	cd internal/pb && protoc --go_out=. --go_opt=paths=source_relative \
	  --go-grpc_out=. --go-grpc_opt=paths=source_relative stage.proto

fmt:
	gofmt -w core sdk plugins

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
