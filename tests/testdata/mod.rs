//! Where the reference data this project did not write lives (tokenizer vectors, chat
//! templates): `shared/testdata` beside the checkout.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `$VIBRANT_TESTDATA`; else `../shared/testdata` beside this checkout; else the same beside
/// the checkout this one was cloned from, when that is a local directory (a fresh clone in
/// /tmp, as CI makes). Missing data then fails its tests naming the first of these paths.
pub fn testdata() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIBRANT_TESTDATA") {
        return PathBuf::from(dir);
    }
    let beside = |checkout: &Path| checkout.join("../shared/testdata");
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    if beside(here).is_dir() {
        return beside(here);
    }
    cloned_from(here)
        .map(|origin| beside(&origin))
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| beside(here))
}

/// The local checkout `origin` of the repository at `checkout` points at, if any.
fn cloned_from(checkout: &Path) -> Option<PathBuf> {
    let out = Command::new("git")
        .arg("-C")
        .arg(checkout)
        .args(["remote", "get-url", "origin"])
        .output()
        .ok()?;
    let url = String::from_utf8(out.stdout).ok()?;
    let origin = PathBuf::from(url.trim());
    (out.status.success() && origin.is_dir()).then_some(origin)
}
