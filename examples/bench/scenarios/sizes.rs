//! Row 7: the size of the release binary and of the publish package.

use std::process::Command;

use crate::Res;
use crate::report::{Row, f};
use crate::scenarios::Ctx;
use crate::services::Services;

/// Row 7.
pub fn sizes(ctx: &Ctx) -> Res<Vec<Row>> {
    println!("== 7. sizes");
    let bin_size = std::fs::metadata(&ctx.svc.handler_bin)
        .map(|m| m.len())
        .unwrap_or(0);
    let (zip_size, zip_how) = package_size(&ctx.svc)?;
    Ok(vec![Row {
        id: "7",
        what: "size: release binary `target/release/handler` / publish package".into(),
        result: format!(
            "{:.1} MB / {:.1} MB ({zip_how})",
            bin_size as f64 / 1_048_576.0,
            zip_size as f64 / 1_048_576.0
        ),
        p50: "n/a".into(),
        p99: "n/a".into(),
        ratio: f(zip_size as f64 / bin_size.max(1) as f64, 2) + " (zip / binary)",
        target: "-".into(),
    }])
}

/// The publish package's size (bytes) and how it was obtained: `dist/functionapp.zip` when
/// scripts/publish-package.sh made one, else the same files zipped here the same way.
fn package_size(svc: &Services) -> Res<(u64, String)> {
    let dist = svc.root.join("dist/functionapp.zip");
    if let Ok(m) = std::fs::metadata(&dist) {
        return Ok((
            m.len(),
            "`dist/functionapp.zip` from scripts/publish-package.sh".into(),
        ));
    }
    let zip = svc.run_dir.join("functionapp.zip");
    let script = r#"
import sys, zipfile
root, binary, out = sys.argv[1:4]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for name in ["host.json", "query/function.json", "update/function.json"]:
        z.write(f"{root}/{name}", name)
    info = zipfile.ZipInfo("handler")
    info.external_attr = 0o755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    with open(binary, "rb") as f:
        z.writestr(info, f.read())
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&svc.root)
        .arg(&svc.handler_bin)
        .arg(&zip)
        .status()
        .map_err(|e| format!("python3: {e}"))?;
    if !status.success() {
        return Err("python3 zipfile failed".into());
    }
    let len = std::fs::metadata(&zip).map(|m| m.len()).unwrap_or(0);
    Ok((
        len,
        "no `dist/functionapp.zip` yet: host.json, query/, update/ and the binary zipped with python3 zipfile (deflate)".into(),
    ))
}
