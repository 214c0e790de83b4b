#!/usr/bin/env bash
# Starts the packaged handler inside a Debian 11 (bullseye) and a Debian 12 (bookworm) root file
# system, the two Debian releases the Azure Functions Linux images are built on, and waits for
# its readiness answer (GET / on its port, as the Functions host asks). A binary that needs a
# newer glibc than the image has fails here with the loader's own message.
#
#   scripts/check-debian-images.sh                   # the handler in dist/functionapp.zip
#   scripts/check-debian-images.sh --zip FILE        # the handler in another package
#   scripts/check-debian-images.sh --binary FILE     # a bare binary (e.g. to see one fail)
#
# The root file systems are made with debootstrap (minbase, plus ca-certificates, which the
# Functions images have and TLS to Redis and Cosmos DB needs) from the Debian mirror this
# machine's apt uses (DEBIAN_MIRROR overrides it), and kept under target/rootfs/ for the next
# run. The handler runs there with chroot, on this machine's network, with placeholder settings:
# it connects to nothing before a request, so no Redis or Cosmos DB is needed.
# Needs root (debootstrap, chroot); without root it says so and exits 0 without checking.
#
# Environment: SUITES (default "bullseye bookworm"), DEBIAN_MIRROR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh

usage() {
  sed -n '7,9p' "$0" | sed 's/^# \{0,1\}//'
}

ZIP="$ROOT/dist/functionapp.zip"
BINARY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --zip) [ $# -ge 2 ] || { usage >&2; exit 2; }; ZIP=$2; shift 2 ;;
    --binary) [ $# -ge 2 ] || { usage >&2; exit 2; }; BINARY=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
SUITES=${SUITES:-bullseye bookworm}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

if [ "$(id -u)" != 0 ]; then
  echo "== Debian image check skipped: debootstrap and chroot need root (run it as root, as CI does)"
  exit 0
fi
command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
command -v python3 >/dev/null 2>&1 || apt_install python3

# The binary: from the package, as the platform unpacks it.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ -z "$BINARY" ]; then
  [ -f "$ZIP" ] || { echo "no package at $ZIP: run scripts/publish-package.sh first" >&2; exit 1; }
  python3 - "$ZIP" "$WORK/handler" <<'PY'
import json, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
exe = json.loads(z.read("host.json").decode("utf-8-sig"))["customHandler"]["description"]["defaultExecutablePath"]
with open(sys.argv[2], "wb") as out:
    out.write(z.read(exe))
PY
  chmod 0755 "$WORK/handler"
  BINARY="$WORK/handler"
fi
[ -f "$BINARY" ] || { echo "no such binary: $BINARY" >&2; exit 1; }

# The Debian mirror this machine's apt uses.
mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/\{0,1\}$/\1/p' | head -n 1)
  [ -n "$uri" ] || uri=$(cat /etc/apt/sources.list 2>/dev/null | sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\/debian\)\/\{0,1\}[[:space:]].*/\2/p' | head -n 1)
  [ -n "$uri" ] || { echo "no Debian mirror in /etc/apt (set DEBIAN_MIRROR)" >&2; exit 1; }
  echo "$uri"
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

failed=0
for suite in $SUITES; do
  rootfs="$TARGET_DIR/rootfs/$suite"
  if [ ! -f "$rootfs/.complete" ]; then
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    echo "== debootstrap $suite (minbase + ca-certificates) into $rootfs"
    started=$(date +%s)
    if ! debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" "$(mirror)" \
      >"$TARGET_DIR/rootfs/$suite.log" 2>&1; then
      tail -n 20 "$TARGET_DIR/rootfs/$suite.log" >&2
      echo "debootstrap $suite failed (log: $TARGET_DIR/rootfs/$suite.log)" >&2
      exit 1
    fi
    touch "$rootfs/.complete"
    echo "   made in $(($(date +%s) - started)) s"
  fi
  glibc=$(chroot "$rootfs" /usr/bin/ldd --version 2>/dev/null | head -n 1 | grep -o '[0-9.]*$' || true)
  app="$rootfs/home/site/wwwroot"
  mkdir -p "$app"
  cp "$BINARY" "$app/handler"
  chmod 0755 "$app/handler"
  port=$(free_port)
  log="$TARGET_DIR/rootfs/$suite-handler.log"
  # The settings the handler requires; placeholders, since readiness contacts neither service.
  chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    FUNCTIONS_CUSTOMHANDLER_PORT="$port" FUNCTIONS_APP_ROOT_PATH=/home/site/wwwroot \
    REDIS_CONNECTION_STRING=redis://127.0.0.1:1 \
    COSMOS_CONNECTION_STRING='AccountEndpoint=https://127.0.0.1:1/;AccountKey=cGxhY2Vob2xkZXI=;' \
    COSMOS_DATABASE=tutorial COSMOS_CONTAINER=us_cities LOG_FORMAT=text \
    /bin/sh -c 'cd /home/site/wwwroot && exec ./handler' >"$log" 2>&1 &
  pid=$!
  started_ns=$(date +%s%N)
  status=""
  for _ in $(seq 300); do
    status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/" || true)
    [ "$status" != "000" ] && [ -n "$status" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  elapsed_ms=$((($(date +%s%N) - started_ns) / 1000000))
  if [ -n "$status" ] && [ "$status" != "000" ]; then
    echo "== Debian $suite (glibc ${glibc:-?}): the handler answered GET / with $status after $elapsed_ms ms"
  else
    echo "== Debian $suite (glibc ${glibc:-?}): the handler did not answer; its output:" >&2
    sed 's/^/   /' "$log" >&2
    failed=1
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -f "$app/handler"
done
exit "$failed"
