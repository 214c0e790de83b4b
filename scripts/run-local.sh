#!/usr/bin/env bash
# The main job, locally, in one command: starts Redis (unless one answers already) and the
# local Cosmos-protocol server, creates tutorial/us_cities and loads the 1,001 cities of
# data/us-cities-top-1k.csv, builds the handler, and serves
# http://127.0.0.1:7071/api/{query,update} through the host emulator (the same wiring
# `func start` does). Ctrl-C stops what it started.
#
# Settings come from local.settings.json if present, else local.settings.json.example
# (as `func start` does; a variable already in the environment wins, as there);
# REDIS_PORT, COSMOS_PORT and HOST_PORT override the ports.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh
ensure_redis
ensure_node_modules

REDIS_PORT=${REDIS_PORT:-6379}
COSMOS_PORT=${COSMOS_PORT:-8081}
HOST_PORT=${HOST_PORT:-7071}
RUN="$ROOT/.run"
mkdir -p "$RUN"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Redis
if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  echo "== Redis: already running on 127.0.0.1:$REDIS_PORT"
else
  echo "== Redis: starting on 127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$RUN/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# 2. The local Cosmos-protocol server (tests/cosmos/launcher.js)
if curl -sf "http://127.0.0.1:$COSMOS_PORT/_test/faults" >/dev/null 2>&1; then
  echo "== Cosmos: local server already running on 127.0.0.1:$COSMOS_PORT"
else
  echo "== Cosmos: starting the local server on 127.0.0.1:$COSMOS_PORT"
  node tests/cosmos/launcher.js --port "$COSMOS_PORT" >"$RUN/cosmos.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening" "$RUN/cosmos.log" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening" "$RUN/cosmos.log" || { cat "$RUN/cosmos.log"; exit 1; }
fi

# 3. Settings, as func start reads them
SETTINGS=local.settings.json
[ -f "$SETTINGS" ] || SETTINGS=local.settings.json.example
echo "== settings: $SETTINGS"
# As Core Tools does, a setting already in the environment wins ("Skipping '…' from
# local.settings.json as it's already defined in current environment variables"), so
# `CACHE_LOCAL_MAX_BYTES=67108864 scripts/run-local.sh` works.
while IFS= read -r line; do
  key=${line%%=*}
  if [ -n "${!key+set}" ]; then
    echo "   skipping '$key' from $SETTINGS: already set in the environment"
  else
    export "$line"
  fi
done < <(node -e '
  const values = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).Values || {};
  for (const [k, v] of Object.entries(values)) {
    if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) && !/[\r\n]/.test(String(v))) console.log(`${k}=${v}`);
  }' "$SETTINGS")
export REDIS_CONNECTION_STRING="redis://127.0.0.1:$REDIS_PORT"
export COSMOS_ENDPOINT="http://127.0.0.1:$COSMOS_PORT/"
export COSMOS_CONNECTION_STRING=""
# The change-feed function's trigger connection (invalidate/function.json), same local account.
export CosmosDBConnection="AccountEndpoint=http://127.0.0.1:$COSMOS_PORT/;AccountKey=${COSMOS_KEY:-};"

# 4. Build
echo "== building the handler (release) and the host emulator (the first build takes several minutes)"
cargo build --release -p cosmos-cache-handler --bin handler -p host-emulator --bin host-emulator
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

# 5. Data: the 1,001-city CSV committed in data/ (plotly's public us-cities-top-1k, see data/README.md)
CSV=data/us-cities-top-1k.csv
echo "== loading $CSV into $COSMOS_DATABASE/$COSMOS_CONTAINER"
"$TARGET_DIR/release/handler" seed --csv "$CSV"

# 6. Handler behind the host emulator. Its output goes to the terminal and to .run/host.log,
# where the handler's own port is read from.
echo "== starting the host emulator on 127.0.0.1:$HOST_PORT"
: >"$RUN/host.log"
"$TARGET_DIR/release/host-emulator" --app-root "$ROOT" --port "$HOST_PORT" --executable "$TARGET_DIR/release/handler" \
  > >(tee -a "$RUN/host.log") 2>&1 &
pids+=($!)
# The emulator listens once the handler answered its readiness probe. Wait for the port with a
# bare TCP connect (no HTTP request, so nothing is logged as a failed call).
for _ in $(seq 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$HOST_PORT") 2>/dev/null && break
  kill -0 "${pids[-1]}" 2>/dev/null || { echo "the host emulator stopped (see above)" >&2; exit 1; }
  sleep 0.1
done
HANDLER_PORT=""
for _ in $(seq 50); do
  HANDLER_PORT=$(sed -n 's/^handler: 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$RUN/host.log" | tail -n 1)
  [ -n "$HANDLER_PORT" ] && break
  sleep 0.1
done
if [ "${AzureFunctionsJobHost__customHandler__enableForwardingHttpRequest:-true}" = false ]; then
  OTHER_MODE=true
else
  OTHER_MODE=false
fi
cat <<EOT

Ready: http://127.0.0.1:$HOST_PORT/api/{query,update} (the handler itself: 127.0.0.1:$HANDLER_PORT). Try:
  curl -i 'http://127.0.0.1:$HOST_PORT/api/query?state=Texas'            # x-cache: miss, then hit
  curl -i 'http://127.0.0.1:$HOST_PORT/api/query?city=Austin&state=Texas'
  curl -i -X POST 'http://127.0.0.1:$HOST_PORT/api/query' -H 'content-type: application/json' \\
       -d '{"query":"SELECT c.city, c.state, c.population FROM c WHERE c.population > @min","parameters":[{"name":"@min","value":1000000}]}'
  curl -i -X POST 'http://127.0.0.1:$HOST_PORT/api/update' -H 'content-type: application/json' \\
       -d '{"id":"austin-texas","city":"Austin","state":"Texas","population":1000000}'
  curl -i -X DELETE 'http://127.0.0.1:$HOST_PORT/api/update?id=austin-texas&partitionKey=Texas'
  curl -s 'http://127.0.0.1:$HANDLER_PORT/_diagnostics'                   # cache counters (handler's own port)
A write straight to Cosmos (not through update) reaches the cache through the change-feed function
(invalidate/, polled every second): the next query misses and shows it.
  curl -i -X POST 'http://127.0.0.1:$COSMOS_PORT/dbs/$COSMOS_DATABASE/colls/$COSMOS_CONTAINER/docs' \
       -H 'x-ms-documentdb-is-upsert: true' -H 'x-ms-documentdb-partitionkey: ["Texas"]' -H 'content-type: application/json' \
       -d '{"id":"austin-texas","city":"Austin","state":"Texas","population":2}'
  sleep 2; curl -i 'http://127.0.0.1:$HOST_PORT/api/query?city=Austin&state=Texas'   # x-cache: miss; population 2
The other wire mode: AzureFunctionsJobHost__customHandler__enableForwardingHttpRequest=$OTHER_MODE $0
Ctrl-C stops the services this script started.
EOT
wait
