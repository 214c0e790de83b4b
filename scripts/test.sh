#!/usr/bin/env bash
# The whole test suite: unit tests, protocol tests, and the integration tests on a real
# redis-server and the local Cosmos-protocol server (each test starts its own Redis; one
# Cosmos server per test binary), behind the host emulator in both wire modes. Everything it
# reads is in the repository (data/, tests/protocol/, tests/schemas/).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh
ensure_redis
ensure_openssl
ensure_node_modules
# The last test binaries cargo runs are the examples, which hold no tests; end with one line
# that sums every binary's result.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --no-fail-fast: a failing binary does not hide the results of the ones after it; the summary
# is printed and cargo's status returned either way.
set +e
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
