# Tern — the two commands: `make run` and `make test` (see README.md).
# Each installs the Debian packages it needs first.

BUILD_PACKAGES := libsqlite3-dev sqlite3 libc-ares-dev pkg-config publicsuffix
TEST_PACKAGES  := swaks libnet-ssleay-perl python3 python3-aiosmtpd dnsmasq-base openssl python3-dkim python3-dnspython opendkim-tools iproute2 python3-yaml python3-dnslib python3-pip prometheus curl chromium
SWIFT_TEST_FLAGS ?=

.PHONY: run test fuzz build release deps test-deps bench migrations clean

## Build (release) and run the server on its defaults: ./tern-data/tern.sqlite, 127.0.0.1:2525.
## Other `tern` commands find that database with TERN_DB=$(CURDIR)/tern-data/tern.sqlite.
TERN_DB ?= $(CURDIR)/tern-data/tern.sqlite
run: release
	TERN_DB=$(TERN_DB) .build/release/tern serve $(ARGS)

## Build and run every test (unit, integration, interop).
test: deps test-deps
	tools/check-links
	tools/fetch-test-data
	swift build --build-tests
	swift test --skip-build $(SWIFT_TEST_FLAGS)
	tools/crash-test --kills 3 --messages 500 --tern .build/debug/tern

build: deps
	swift build

release: deps
	swift build -c release --product tern

deps:
	@tools/ensure-packages $(BUILD_PACKAGES)

test-deps:
	@tools/ensure-packages $(TEST_PACKAGES)

## libFuzzer targets (Fuzz/), each for FUZZ_SECONDS from its committed corpus; CI runs this after `test`.
FUZZ_SECONDS ?= 60
fuzz: deps
	tools/fuzz --seconds $(FUZZ_SECONDS)

## Benchmarks (print figures; not tests): intake, then end-to-end relay.
bench: release
	swift build -c release --product tern-loadgen
	swift build -c release --product tern-sink
	tools/bench-intake
	tools/bench-relay

## Regenerate the embedded copy of migrations/*.sql.
migrations:
	tools/gen-migrations

clean:
	rm -rf .build
