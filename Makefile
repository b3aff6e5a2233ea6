# Thin wrapper over CMake. The two set-up commands are `make run` and `make test`.
#   make         build/rastro (release)
#   make run     install missing Debian packages, build, serve on 127.0.0.1:8000 with data in ./data
#   make test    install missing packages, build with ASan+UBSan, run the whole suite through ctest
#   make bench   (see BENCHMARKS.md)
# CI=true turns warnings into errors.

BUILD      ?= build
TEST_BUILD ?= build-test
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
LISTEN     ?= 127.0.0.1:8000
DATA       ?= ./data
WERROR     := $(if $(filter true 1,$(CI)),ON,OFF)

# Debian packages the build, the tests and `make run` need (prometheus: its
# promtool checks the /metrics exposition in the tests; postgresql-15: the
# tests start a throwaway cluster for the PostgreSQL store; nats-server: the
# tests start JetStream servers for the distributed roles).
PKGS := build-essential cmake pkg-config libmicrohttpd-dev libsqlite3-dev libcjson-dev \
        libpq-dev libnats-dev python3 sqlite3 prometheus postgresql-15 postgresql-client-15 \
        nats-server
# ... and the benchmark: the load generator, nginx as the HTTP ceiling, curl,
# and the two other JSON libraries the JSON row compares cJSON with.
BENCH_PKGS := $(PKGS) wrk nginx-light curl libjson-c-dev libjansson-dev

.PHONY: all run test test-deep deps clean bench bench-json fuzz

all:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRASTRO_WERROR=$(WERROR) >/dev/null
	cmake --build $(BUILD) -j $(JOBS) --target rastro

deps:
	@sh tools/install-deps.sh $(PKGS)

run: deps all
	./$(BUILD)/rastro serve --listen $(LISTEN) --data $(DATA)

test: deps
	cmake -S . -B $(TEST_BUILD) -DCMAKE_BUILD_TYPE=Debug -DRASTRO_SANITIZE=ON -DRASTRO_WERROR=$(WERROR) >/dev/null
	cmake --build $(TEST_BUILD) -j $(JOBS)
	cd $(TEST_BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 600

# Prints the benchmark table (BENCHMARKS.md explains each row). Not part of
# `make test`: nothing asserts a speed. BENCH_SECONDS, BENCH_CONNS and
# BENCH_SCALE tune it (see bench/run.sh).
bench:
	@sh tools/install-deps.sh $(BENCH_PKGS)
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRASTRO_WERROR=$(WERROR) >/dev/null
	cmake --build $(BUILD) -j $(JOBS) --target rastro rastro-gen
	bash bench/run.sh

# cJSON vs json-c vs jansson on a command body (the choice of JSON library).
bench-json:
	@sh tools/install-deps.sh $(BENCH_PKGS)
	$(MAKE) -C bench/json run

# The whole suite once under ThreadSanitizer, then the end-to-end tests with
# the server under valgrind's memcheck (errors or definite leaks fail the
# server's exit code, which the tests check). Slower; not in every CI run.
test-deep: deps
	@sh tools/install-deps.sh valgrind
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS="-fsanitize=thread -g -O1" \
	  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" -DRASTRO_WERROR=$(WERROR) >/dev/null
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -j $(JOBS) --timeout 900
	cmake -S . -B build-valgrind -DCMAKE_BUILD_TYPE=Debug -DRASTRO_WERROR=$(WERROR) >/dev/null
	cmake --build build-valgrind -j $(JOBS) --target rastro
	sh tools/testpg.sh start build-valgrind/testpg >/dev/null
	status=0; for t in commands queries lifecycle metrics auth crash readonly bus nats_cluster \
	    postgres topology; do \
	  RASTRO_BIN=$(CURDIR)/tools/valgrind-rastro RASTRO_TEST_PG_DIR=$(CURDIR)/build-valgrind/testpg \
	    python3 tests/e2e/test_$$t.py || { status=1; break; }; \
	done; sh tools/testpg.sh stop build-valgrind/testpg; exit $$status

# libFuzzer on the command decoder, the router and the event decoder, each
# for FUZZ_SECONDS (default 60). New inputs go to a scratch corpus; a crash
# is written to tests/fuzz/crash-* (add it to tests/fuzz/corpus/<target>/ as
# a regression input once fixed: make test replays that folder).
FUZZ_SECONDS ?= 60
fuzz:
	@sh tools/install-deps.sh $(PKGS) clang libclang-rt-14-dev
	CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DRASTRO_FUZZ=ON >/dev/null
	cmake --build build-fuzz -j $(JOBS) --target fuzz_command fuzz_route fuzz_event
	for t in command route event; do \
	  mkdir -p build-fuzz/corpus-$$t && \
	  ./build-fuzz/tests/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=70000 \
	    -artifact_prefix=tests/fuzz/crash-$$t- build-fuzz/corpus-$$t tests/fuzz/corpus/$$t || exit 1; \
	done

clean:
	rm -rf $(BUILD) $(TEST_BUILD) build-fuzz build-tsan build-valgrind
