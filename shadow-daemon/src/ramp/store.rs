//! Ramps survive restarts: their state is kept in `--state-dir` as one JSON file
//! (`ramps.json`: rule name to [`Saved`]), written atomically (a temporary file in the same
//! directory, synced, renamed over the old one) whenever a ramp moves. The directory is created
//! with mode 0700. A missing, unreadable or corrupt file starts every ramp at its first step, and
//! the caller logs one line saying why.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use super::Saved;

/// The file's name in the state directory.
pub const FILE: &str = "ramps.json";

/// What the file holds.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedRamps {
    pub version: u32,
    pub rules: BTreeMap<String, Saved>,
}

const VERSION: u32 = 1;

/// Why the saved state was not taken up (logged; every ramp then starts at its first step).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no saved ramp state in {0}")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a saved ramp state ({reason})")]
    Corrupt { path: PathBuf, reason: String },
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The saved ramps in `dir`.
pub fn load(dir: &Path) -> Result<SavedRamps, LoadError> {
    let p = path(dir);
    let text = match fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadError::Missing(p)),
        Err(e) => return Err(LoadError::Read { path: p, source: e }),
    };
    let saved: SavedRamps =
        serde_json::from_slice(&text).map_err(|e| LoadError::Corrupt { path: p.clone(), reason: e.to_string() })?;
    if saved.version != VERSION {
        return Err(LoadError::Corrupt {
            path: p,
            reason: format!("version {}, this daemon writes {VERSION}", saved.version),
        });
    }
    Ok(saved)
}

/// Create `dir` (0700, with its parents) if it is missing: done at start, so a directory that
/// cannot be made is an error before anything attaches.
pub fn prepare(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Write `rules` to `dir` atomically.
pub fn save(dir: &Path, rules: &BTreeMap<String, Saved>) -> io::Result<()> {
    let body = serde_json::to_vec_pretty(&SavedRamps { version: VERSION, rules: rules.clone() })
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let tmp = dir.join(format!(".{FILE}.{}", std::process::id()));
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path(dir))?;
    // The rename itself is durable once the directory is.
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::ramp::State;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shadow-ramp-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn saved(step: usize) -> Saved {
        Saved {
            steps_ppm: vec![10_000, 50_000],
            state: State::Advancing,
            step,
            since_unix_ms: 1_700_000_000_000,
            baseline_p99_ns: Some(4_000_000),
            last: None,
        }
    }

    #[test]
    fn state_round_trips_through_a_private_directory() {
        let dir = scratch("rt").join("nested");
        prepare(&dir).expect("prepare");
        let mode = fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(matches!(load(&dir), Err(LoadError::Missing(_))));
        let rules: BTreeMap<String, Saved> = [("api".to_string(), saved(1))].into();
        save(&dir, &rules).expect("save");
        assert_eq!(load(&dir).expect("load").rules, rules);
        let file_mode = fs::metadata(path(&dir)).expect("file").permissions().mode() & 0o777;
        assert_eq!(file_mode, 0o600);
        // Overwritten whole; no temporary file left behind.
        let rules2: BTreeMap<String, Saved> = [("api".to_string(), saved(0))].into();
        save(&dir, &rules2).expect("save again");
        assert_eq!(load(&dir).expect("load").rules, rules2);
        let names: Vec<_> = fs::read_dir(&dir).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, [FILE]);
        let _ = fs::remove_dir_all(dir.parent().expect("parent"));
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_refused_with_its_path() {
        let dir = scratch("bad");
        prepare(&dir).expect("prepare");
        fs::write(path(&dir), b"{\"version\": 1, \"rules\": {\"api\": 3}}").expect("write");
        let e = load(&dir).expect_err("corrupt").to_string();
        assert!(e.contains("ramps.json is not a saved ramp state"), "{e}");
        fs::write(path(&dir), b"{\"version\": 9, \"rules\": {}}").expect("write");
        let e = load(&dir).expect_err("version").to_string();
        assert!(e.contains("version 9"), "{e}");
        fs::write(path(&dir), b"").expect("write");
        assert!(matches!(load(&dir), Err(LoadError::Corrupt { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
