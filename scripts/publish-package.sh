#!/usr/bin/env bash
# Builds the deployment package of the Function App: dist/functionapp.zip, ready for
# `az functionapp deployment source config-zip --src dist/functionapp.zip` (see README, Deploying).
#
#   scripts/publish-package.sh                  # build the static (musl) handler, then package
#   scripts/publish-package.sh --binary PATH    # package an already built binary (no build)
#   scripts/publish-package.sh --out FILE       # write FILE instead of dist/functionapp.zip
#
# The binary:
# * is built with `cargo build --release --locked --bin handler --target x86_64-unknown-linux-musl`:
#   a fully static executable (no dynamic loader, no glibc, no shared library), so it runs on
#   every Linux x86_64 image the Functions host may use, whatever its glibc (the Debian 11 based
#   images have glibc 2.31, the Debian 12 based ones 2.36). The script adds the Rust target
#   (rustup) and musl-gcc (Debian's musl-tools, for the C parts of the TLS library) when they
#   are missing. Only the bin target is built, so the dev-only feature `test-hooks` (enabled
#   through the crate's self dev-dependency for tests) is not compiled in;
# * must be an ELF x86-64 executable (Azure Functions on Linux runs x86_64);
# * if it is dynamically linked (a binary given with --binary), must need no glibc symbol newer
#   than MAX_GLIBC (default 2.31, the glibc of Debian 11, the oldest base of the images).
#
# scripts/check-debian-images.sh then runs the packaged binary in Debian 11 and 12 root file
# systems and waits for its readiness answer (CI runs both).
#
# The zip holds what `func azure functionapp publish` would upload: every file under the
# repository root that `.funcignore` does not exclude, matched the way Azure Functions Core
# Tools matches it (its GitIgnoreParser: each pattern is anchored at the app root and ends at a
# word boundary; `!` re-includes), minus the files Core Tools always skips (.funcignore,
# .gitignore, local.settings.json, project.lock.json, .git/, .vscode/). The binary is stored at
# the path `customHandler.description.defaultExecutablePath` of host.json names, with Unix mode
# 0755 and "made by Unix", so the host can execute it after the zip is mounted or extracted.
# The script refuses to write a package that lacks host.json, a function.json or the binary, or
# that would contain local.settings.json, target/, src/, tests/, data/ or Rust sources.
#
# Environment: MAX_GLIBC (default 2.31), ZIP_LEVEL (deflate level 0-9, default 9).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
. scripts/lib.sh

usage() {
  sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
}

BINARY=""
OUT="$ROOT/dist/functionapp.zip"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || { usage >&2; exit 2; }; BINARY=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; OUT=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
MAX_GLIBC=${MAX_GLIBC:-2.31}
TARGET=x86_64-unknown-linux-musl
ZIP_LEVEL=${ZIP_LEVEL:-9}
command -v python3 >/dev/null 2>&1 || { echo "python3 is required (apt-get install python3)" >&2; exit 1; }

# 1. The binary
if [ -z "$BINARY" ]; then
  # The features a non-test build resolves for the crate itself (dev-dependencies excluded).
  if cargo tree --locked -e normal,build,features -i cosmos-cache-handler | grep -q 'test-hooks'; then
    echo "the release build would enable the dev-only feature test-hooks: refusing" >&2
    exit 1
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "== rustup target add $TARGET"
    rustup target add "$TARGET"
  fi
  command -v musl-gcc >/dev/null 2>&1 || apt_install musl-tools
  echo "== cargo build --release --locked --bin handler --target $TARGET"
  cargo build --release --locked --bin handler --target "$TARGET"
  BINARY="${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/handler"
fi
[ -f "$BINARY" ] || { echo "no such binary: $BINARY" >&2; exit 1; }

# 2. Linux x86_64; static, or no glibc symbol newer than MAX_GLIBC
LINKAGE=$(python3 - "$BINARY" <<'PY'
import struct, sys
path = sys.argv[1]
with open(path, "rb") as f:
    elf = f.read()
# e_ident: magic, EI_CLASS (2 = 64-bit), EI_DATA (1 = little endian); e_machine at 18 (62 = x86-64)
if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1 or int.from_bytes(elf[18:20], "little") != 62:
    sys.exit(f"{path} is not an ELF x86-64 executable: Azure Functions on Linux runs x86_64")
# Program headers: a PT_INTERP (3) entry names the dynamic loader a dynamic executable needs.
phoff, = struct.unpack_from("<Q", elf, 32)
phentsize, phnum = struct.unpack_from("<HH", elf, 54)
types = [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]
print("dynamic" if 3 in types else "static")
PY
)
if [ "$LINKAGE" = static ]; then
  echo "== glibc: none needed: a static executable (no dynamic loader, no shared library)"
else
  ensure_objdump
  NEEDED_GLIBC=$(objdump -T "$BINARY" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV | tail -n 1 || true)
  if [ -n "$NEEDED_GLIBC" ]; then
    NEWEST=$(printf '%s\n%s\n' "$NEEDED_GLIBC" "$MAX_GLIBC" | sort -V | tail -n 1)
    if [ "$NEWEST" != "$MAX_GLIBC" ]; then
      echo "$BINARY needs GLIBC_$NEEDED_GLIBC, newer than MAX_GLIBC=$MAX_GLIBC (default 2.31, the" >&2
      echo "glibc of Debian 11, on which some Functions images are built): run this script" >&2
      echo "without --binary to build a static binary" >&2
      exit 1
    fi
    echo "== glibc: a dynamic executable; needs GLIBC_$NEEDED_GLIBC at most (limit $MAX_GLIBC)"
  else
    echo "== glibc: a dynamic executable that needs no versioned glibc symbol"
  fi
fi

# 3. The zip
mkdir -p "$(dirname "$OUT")"
python3 - "$ROOT" "$BINARY" "$OUT" "$ZIP_LEVEL" <<'PY'
import json, os, re, stat, sys, time, zipfile

root, binary, out, level = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def fail(message):
    sys.exit(f"publish-package: {message}")

# -- the executable host.json names --------------------------------------------------------
try:
    with open(os.path.join(root, "host.json"), encoding="utf-8-sig") as f:
        host = json.load(f)
except (OSError, ValueError) as e:
    fail(f"cannot read host.json: {e}")
description = (host.get("customHandler") or {}).get("description") or {}
exe = str(description.get("defaultExecutablePath") or "").replace("\\", "/")
worker_dir = str(description.get("workerDirectory") or "").strip("/")
if worker_dir:
    exe = f"{worker_dir}/{exe}"
if not exe or exe.startswith("/") or "%" in exe or ".." in exe.split("/"):
    fail("customHandler.description.defaultExecutablePath must be a relative path inside the "
         f"app (got {exe!r})")

# -- .funcignore, as Core Tools' GitIgnoreParser reads it -----------------------------------
def pattern_regex(pattern):
    escaped = re.sub(r"[\-\[\]/{}()+?.\\^$|]", lambda m: "\\" + m.group(0), pattern)
    return escaped.replace("**", "(.+)").replace("*", "([^\\/]+)")

positive, negative = [], []
try:
    with open(os.path.join(root, ".funcignore"), encoding="utf-8") as f:
        lines = f.read().split("\n")
except FileNotFoundError:
    lines = []
for line in (l.strip() for l in lines):
    if not line or line.startswith("#"):
        continue
    target = negative if line.startswith("!") else positive
    line = line[1:] if line.startswith("!") else line
    line = line[1:] if line.startswith("/") else line
    target.append(pattern_regex(line))

def combined(items):
    if not items:
        return re.compile("$^")
    return re.compile("^((" + ")|(".join(sorted(items)) + "))\\b", re.ASCII)

denied_re, accepted_re = combined(positive), combined(negative)

def accepts(rel):
    return bool(accepted_re.match(rel)) or not denied_re.match(rel)

ALWAYS_SKIPPED_DIRS = {".git", ".vscode"}
ALWAYS_SKIPPED_FILES = {".funcignore", ".gitignore", "local.settings.json", "project.lock.json"}

files = []
for dirpath, dirnames, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
    rel_dir = "" if rel_dir == "." else rel_dir + "/"
    # A denied directory denies everything below it unless a `!` pattern could re-include.
    dirnames[:] = sorted(
        d for d in dirnames
        if d not in ALWAYS_SKIPPED_DIRS and (negative or accepts(rel_dir + d))
    )
    for name in filenames:
        rel = rel_dir + name
        if name in ALWAYS_SKIPPED_FILES or not accepts(rel) or rel == exe:
            continue
        if not os.path.isfile(os.path.join(root, rel)):
            continue  # sockets, dangling links
        files.append(rel)
files.sort()

# -- checks --------------------------------------------------------------------------------
functions = sorted(
    d for d in os.listdir(root)
    if os.path.isfile(os.path.join(root, d, "function.json"))
)
missing = [p for p in ["host.json"] + [f"{d}/function.json" for d in functions] if p not in files]
if not functions:
    fail("no <function>/function.json under the app root")
if missing:
    fail(f".funcignore excludes files the host needs: {', '.join(missing)}")
forbidden = [
    p for p in files
    if p.split("/")[-1].startswith("local.settings.json")
    or p.split("/")[0] in {"target", "src", "tests", "dist", "data", ".git"}
    or p.endswith(".rs") or p in {"Cargo.toml", "Cargo.lock"}
]
if forbidden:
    fail(f"these files must not be deployed (fix .funcignore): {', '.join(forbidden)}")

# -- write ---------------------------------------------------------------------------------
def entry(name, path, mode):
    info = zipfile.ZipInfo.from_file(path, name)
    info.create_system = 3                      # "made by" Unix: the mode below applies
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info

tmp = out + ".tmp"
entries = [(rel, os.path.join(root, rel), 0o644) for rel in files]
entries.append((exe, binary, 0o755))
entries.sort()
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as z:
    for name, path, mode in entries:
        info = entry(name, path, mode)
        with open(path, "rb") as src, z.open(info, "w") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
os.replace(tmp, out)

for name, path, mode in entries:
    print(f"   {oct(mode)[2:]}  {os.path.getsize(path):>10}  {name}")
size = os.path.getsize(out)
print(f"== package: {os.path.abspath(out)} ({size} bytes, {size / 1048576:.1f} MiB; "
      f"binary {os.path.getsize(binary)} bytes)")
PY
