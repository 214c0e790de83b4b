//! The deployment package (`scripts/publish-package.sh`): its entries, the Unix mode of the
//! binary, and the unpacked package actually serving queries under the host emulator, which
//! finds the binary through `host.json` alone, as the Functions host does.
//!
//! The script is run with `--binary` on the test build of `handler`, so `cargo test` does not
//! need a second (release) build; what is tested is the packaging, not the optimiser.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::host_emulator::{self, EmulatorConfig, HostEmulator};
use crate::support::scratch::ScratchDir;
use crate::support::stack::city_rows;
use crate::support::{Mode, Stack};

/// One central-directory record of a zip file.
#[derive(Debug)]
struct ZipEntry {
    /// High byte of "version made by": 3 = Unix (APPNOTE 4.4.2).
    made_by_os: u8,
    /// Upper 16 bits of the external attributes: the Unix `st_mode` when made by Unix.
    unix_mode: u32,
    /// Uncompressed size.
    size: u64,
}

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the central directory, independently of the Python `zipfile` that wrote it.
fn central_directory(zip: &[u8]) -> BTreeMap<String, ZipEntry> {
    const EOCD: u32 = 0x0605_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    let eocd = (0..=zip.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(zip, i) == EOCD)
        .expect("end of central directory record");
    let count = u16_at(zip, eocd + 10);
    let mut at = u32_at(zip, eocd + 16) as usize;
    let mut entries = BTreeMap::new();
    for _ in 0..count {
        assert_eq!(u32_at(zip, at), CENTRAL, "central directory header at {at}");
        let name_len = u16_at(zip, at + 28);
        let extra_len = u16_at(zip, at + 30);
        let comment_len = u16_at(zip, at + 32);
        let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).expect("name");
        entries.insert(
            name,
            ZipEntry {
                made_by_os: zip[at + 5],
                unix_mode: u32_at(zip, at + 38) >> 16,
                size: u64::from(u32_at(zip, at + 24)),
            },
        );
        at += 46 + name_len + extra_len + comment_len;
    }
    entries
}

/// Same bytes, compared in chunks (the test binary is ~200 MB).
fn same_contents(a: &Path, b: &Path) -> bool {
    let open = |p: &Path| {
        std::io::BufReader::new(
            std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display())),
        )
    };
    let (mut a, mut b) = (open(a), open(b));
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).expect("read");
        if n == 0 {
            return b.read(&mut y).expect("read") == 0;
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

/// Runs the script on the test binary; returns the zip path and the script's stdout.
fn build_package(dir: &ScratchDir) -> (PathBuf, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let zip = dir.join("functionapp.zip");
    let output = Command::new("bash")
        .arg(root.join("scripts/publish-package.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_handler"))
        .arg("--out")
        .arg(&zip)
        // Fast deflate: the debug binary is large; the level changes nothing that is checked.
        .env("ZIP_LEVEL", "1")
        // The test binary is linked against this machine's glibc; the published one is static
        // (checked by scripts/check-debian-images.sh in CI). Only the packaging is tested here.
        .env("MAX_GLIBC", "2.99")
        .output()
        .expect("run scripts/publish-package.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "publish-package.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (zip, stdout)
}

/// Extracts with Python's `zipfile` (contents only), then applies the Unix modes from the
/// central directory, as the platform's unzip does.
fn unpack(zip: &Path, entries: &BTreeMap<String, ZipEntry>, into: &Path) {
    let status = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
        ])
        .arg(zip)
        .arg(into)
        .status()
        .expect("python3");
    assert!(status.success(), "unzip failed");
    for (name, entry) in entries {
        let path = into.join(name);
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(entry.unix_mode & 0o7777),
        )
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_has_the_app_files_and_an_executable_handler_that_serves_queries() {
    let dir = ScratchDir::new("publish");
    let (zip, stdout) = build_package(&dir);
    assert!(
        stdout.contains(&format!("== package: {}", zip.display())),
        "the script prints the package path:\n{stdout}"
    );
    let zip_size = std::fs::metadata(&zip).expect("zip").len();
    assert!(
        stdout.contains(&format!("({zip_size} bytes")),
        "the script prints the package size:\n{stdout}"
    );
    assert!(stdout.contains("== glibc: "), "glibc check:\n{stdout}");

    // Exactly the files the host needs; nothing .funcignore excludes.
    let bytes = std::fs::read(&zip).expect("read the zip");
    let entries = central_directory(&bytes);
    let names: Vec<&str> = entries.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "handler",
            "host.json",
            "invalidate/function.json",
            "query/function.json",
            "update/function.json"
        ],
        "package entries"
    );
    for (name, entry) in &entries {
        assert_eq!(entry.made_by_os, 3, "{name}: made by Unix");
        let expected = if name == "handler" {
            0o100755
        } else {
            0o100644
        };
        assert_eq!(
            entry.unix_mode, expected,
            "{name}: mode {:o}",
            entry.unix_mode
        );
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_handler"));
    assert_eq!(
        entries["handler"].size,
        std::fs::metadata(binary).expect("binary").len()
    );

    // Unpacked, it is the app: host.json names `handler`, which is the binary, executable.
    let app = dir.join("app");
    std::fs::create_dir_all(&app).expect("app dir");
    unpack(&zip, &entries, &app);
    assert!(same_contents(&app.join("handler"), binary), "binary bytes");
    for file in ["host.json", "query/function.json", "update/function.json"] {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            std::fs::read(app.join(file)).expect("unpacked file"),
            std::fs::read(root.join(file)).expect("repository file"),
            "{file}"
        );
    }
    let host_text = std::fs::read_to_string(app.join("host.json")).expect("host.json");
    let host = host_emulator::parse_host_json(&host_text, &[]).expect("host.json");
    let (program, _, _) =
        host_emulator::resolve_command(&host, &app, None, &[]).expect("resolve the executable");
    assert_eq!(
        program,
        app.join("handler"),
        "the host runs the unpacked binary"
    );

    let texas: HashSet<String> = city_rows()
        .into_iter()
        .filter(|c| c.state == "Texas")
        .map(|c| c.city)
        .collect();
    for mode in [Mode::Forwarding, Mode::Payload] {
        // A generous Redis timeout: this test is about the package, not about timeouts.
        let mut stack = Stack::services(mode, true, &[("REDIS_TIMEOUT_MS", "3000")]);
        let host = HostEmulator::start(EmulatorConfig {
            app_root: app.clone(),
            executable: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            env: stack.handler_env(),
        })
        .await
        .unwrap_or_else(|e| panic!("host emulator on the unpacked package ({mode:?}): {e}"));
        stack.host = Some(host);

        let first = stack.get("query?state=Texas&maxItemCount=1000").await;
        assert_eq!(first.status, 200, "{mode:?}: {}", first.text);
        assert_eq!(first.cache(), "miss", "{mode:?}");
        let cities: HashSet<String> = first.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|c| c["city"].as_str().expect("city").to_string())
            .collect();
        assert_eq!(cities, texas, "{mode:?}: the Texas cities");
        let second = stack.get("query?state=Texas&maxItemCount=1000").await;
        assert_eq!(second.cache(), "hit", "{mode:?}");
        assert_eq!(second.text, first.text, "{mode:?}");
        stack.shutdown().await;
    }
}

/// The test binary is linked against this machine's glibc (2.36, Debian 12): by default the
/// script refuses it, since the Debian 11 based Functions images have glibc 2.31.
#[test]
fn package_refuses_a_binary_that_needs_a_newer_glibc_than_debian_11() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = ScratchDir::new("publish-glibc");
    let output = Command::new("bash")
        .arg(root.join("scripts/publish-package.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_handler"))
        .arg("--out")
        .arg(dir.join("functionapp.zip"))
        .env_remove("MAX_GLIBC")
        .output()
        .expect("run scripts/publish-package.sh");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a glibc-2.34 binary must be refused"
    );
    assert!(
        stderr.contains("newer than MAX_GLIBC=2.31"),
        "the reason is given:\n{stderr}"
    );
    assert!(
        !dir.join("functionapp.zip").exists(),
        "no package is written"
    );
}
