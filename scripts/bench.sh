#!/usr/bin/env bash
# The benchmark, in one command: installs what is missing (redis-server and wrk from Debian's
# packages, the local Cosmos server from npm), builds the release handler and the benchmark
# driver (examples/bench/), then starts its own redis-server and local Cosmos-protocol server
# on free 127.0.0.1 ports, seeds them, and prints one markdown table measured in this run
# (also written to .run/bench/results.md). About 5-8 minutes after the build on 2 cores.
#
#   scripts/bench.sh [--no-world] [--no-profile] [--quick]
#     --no-world     skip the 171,075-city container (about 1 minute of seeding)
#     --no-profile   skip the perf profile of the hit path
#     --quick        short runs: a smoke test of the benchmark, not numbers to quote
#     --failover     only the failover checker (tests/api/failover.rs, about a minute): a real
#                    primary and replica behind the chaos proxy, two handler instances, FAILOVERS
#                    (default 6) failovers at random moments, every other one to a lagging
#                    replica; prints stale reads, hit resumption, entries made unreachable and
#                    write latency with and without replicas (release build)
#
# Nothing else should be running: the load generators, Redis, the Cosmos server and the
# handler share this machine's cores (the table's machine section lists what else ran).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh
ensure_redis
ensure_node_modules

if [[ " $* " == *" --failover "* ]]; then
  echo "== failover checker (release build of the integration tests)"
  cargo test --release --quiet --test api failover_checker_report -- --ignored --nocapture \
    2>&1 | grep -v -e '^\[host-emulator\]' -e '^\[handler\]'
  exit "${PIPESTATUS[0]}"
fi

command -v wrk >/dev/null 2>&1 || apt_install wrk
command -v redis-benchmark >/dev/null 2>&1 || apt_install redis-tools
command -v python3 >/dev/null 2>&1 || apt_install python3
# perf is optional (the profile section is skipped without it).
if ! command -v perf >/dev/null 2>&1 && [[ " $* " != *" --no-profile "* ]]; then
  apt_install linux-perf || echo "== linux-perf not installable: no profile"
fi

echo "== building (release): the handler, then the benchmark driver"
# Two invocations on purpose: building an example enables the crate's test-only feature
# (test-hooks, through the self dev-dependency), and the handler measured must be the one
# that ships, built without it.
cargo build --release --quiet --bin handler
cargo build --release --quiet --example bench
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bench" "$@"
