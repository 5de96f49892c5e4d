//! The reference data sets nobody on this project wrote (`shared/data` of the workplace:
//! ClassBench rule sets and traces, a full BGP table), found and read for tests, benches,
//! the lab and `twill policy classify`.
//!
//! The directory is, in this order: `$TWILL_DATA_DIR`; `shared/data` beside the workspace
//! (a checkout next to `shared/`); `/work/shared/data`. A missing data set is an error that
//! says where it was looked for, never a silent skip.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The data directory, or where it was looked for.
pub fn data_dir() -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("TWILL_DATA_DIR") {
        candidates.push(PathBuf::from(d));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    candidates.push(PathBuf::from("/work/shared/data"));
    for c in candidates {
        if c.join("README.md").is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(format!(
        "the reference data directory (shared/data, with its README.md) is not at any of: {}; set TWILL_DATA_DIR",
        tried.join(", ")
    ))
}

/// Reads a text file, gunzipping it when its name ends in `.gz`.
pub fn read_text(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .map_err(|e| format!("{}: not a gzip text file: {e}", path.display()))?;
        Ok(s)
    } else {
        String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8 text: {e}", path.display()))
    }
}

/// The content lines of a one-item-per-line text file such as a route list: each with its
/// 1-based line number, `#` comments cut and blanks trimmed, empty ones left out.
pub fn content_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(n, l)| (n + 1, l.split('#').next().unwrap_or("").trim())).filter(|(_, l)| !l.is_empty())
}

/// Reads `relative` (such as `classbench/acl1_1k.gz`) from the data directory.
pub fn read(relative: &str) -> Result<String, String> {
    read_text(&data_dir()?.join(relative))
}
