#!/usr/bin/env bash
# The whole test suite: unit tests, protocol tests, and the integration tests on a real
# redis-server and the local Cosmos-protocol server (each test starts its own Redis; one
# Cosmos server per test binary), behind the host emulator in both wire modes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh
ensure_redis
ensure_openssl
ensure_node_modules
if [ ! -f ../shared/data/us-cities-top-1k.csv ]; then
  echo "the integration tests load ../shared/data/us-cities-top-1k.csv, which is not there" >&2
  exit 1
fi
cargo test --all-targets "$@"
