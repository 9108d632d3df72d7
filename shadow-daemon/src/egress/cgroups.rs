//! The shadow's cgroups: absolute cgroup v2 paths, with glob components (`*`, `?`, `[..]`,
//! matched within one path component), expanded against the filesystem as cgroups come and go
//! (a pod's cgroup under `kubepods.slice` appears when the pod starts).

use std::{
    fmt, io,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
    str::FromStr,
};

/// A cgroup path or glob, as configured.
#[derive(Clone, Debug)]
pub struct CgroupPattern {
    text: String,
    /// Per component: the literal name, or its compiled glob.
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    Literal(String),
    Glob(globset::GlobMatcher),
}

impl PartialEq for CgroupPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for CgroupPattern {}

/// A cgroup the fence is on: its path and id (the directory's inode: what the kernel calls the
/// cgroup id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cgroup {
    pub id: u64,
    pub path: PathBuf,
}

impl CgroupPattern {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_glob(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Glob(_)))
    }

    /// The literal directories before the first glob component.
    pub fn base(&self) -> PathBuf {
        let mut p = PathBuf::from("/");
        for part in &self.parts {
            match part {
                Part::Literal(l) => p.push(l),
                Part::Glob(_) => break,
            }
        }
        p
    }

    /// The directories that match now, with their cgroup ids, sorted. A missing directory
    /// matches nothing; any other error (permissions, a broken mount) is returned, so that a
    /// fence is never taken down because its cgroups could not be read.
    pub fn expand(&self) -> io::Result<Vec<Cgroup>> {
        let mut current = vec![PathBuf::from("/")];
        for part in &self.parts {
            let mut next = Vec::new();
            for dir in &current {
                match part {
                    Part::Literal(l) => next.push(dir.join(l)),
                    Part::Glob(g) => {
                        let entries = match std::fs::read_dir(dir) {
                            Ok(e) => e,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
                        };
                        for e in entries {
                            let e = e?;
                            if e.file_type().is_ok_and(|t| t.is_dir()) && g.is_match(e.file_name()) {
                                next.push(e.path());
                            }
                        }
                    }
                }
            }
            current = next;
        }
        let mut out = Vec::new();
        for path in current {
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => out.push(Cgroup { id: m.ino(), path }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            }
        }
        out.sort();
        Ok(out)
    }
}

impl FromStr for CgroupPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let path = Path::new(text);
        if !path.is_absolute() {
            return Err(format!(
                "'{text}' is not an absolute cgroup v2 path (e.g. /sys/fs/cgroup/system.slice/orders-v2.service)"
            ));
        }
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir => {}
                Component::Normal(n) => {
                    let n = n.to_str().ok_or_else(|| format!("'{text}' is not UTF-8"))?;
                    if n.contains(['*', '?', '[']) {
                        let g = globset::GlobBuilder::new(n)
                            .literal_separator(true)
                            .build()
                            .map_err(|e| format!("'{text}': {n}: {}", e.kind()))?;
                        parts.push(Part::Glob(g.compile_matcher()));
                    } else {
                        parts.push(Part::Literal(n.to_owned()));
                    }
                }
                Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                    return Err(format!("'{text}': '.' and '..' are not allowed in a cgroup path"));
                }
            }
        }
        if parts.is_empty() {
            return Err(format!("'{text}' is the filesystem root, not a cgroup"));
        }
        Ok(Self { text: text.trim_end_matches('/').to_owned(), parts })
    }
}

impl fmt::Display for CgroupPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_refuse_what_is_not_a_path() {
        let p: CgroupPattern = "/sys/fs/cgroup/kubepods.slice/*/pod*".parse().expect("glob");
        assert!(p.is_glob());
        assert_eq!(p.base(), Path::new("/sys/fs/cgroup/kubepods.slice"));
        let p: CgroupPattern = "/sys/fs/cgroup/system.slice/orders-v2.service/".parse().expect("path");
        assert!(!p.is_glob());
        assert_eq!(p.as_str(), "/sys/fs/cgroup/system.slice/orders-v2.service");
        for (bad, says) in [
            ("system.slice/x.service", "not an absolute"),
            ("/sys/fs/cgroup/../x", "'..'"),
            ("/", "filesystem root"),
            ("/sys/fs/cgroup/[x", "unclosed"),
        ] {
            let e = bad.parse::<CgroupPattern>().expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn globs_expand_within_one_component_and_missing_dirs_match_nothing() {
        let root = std::env::temp_dir().join(format!("shadow-cg-{}", std::process::id()));
        for d in ["a.slice/pod1/c1", "a.slice/pod2/c1", "a.slice/other/c1", "b.slice/pod3"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join("a.slice/podfile"), b"").expect("file");
        let pat = |s: &str| format!("{}/{s}", root.display()).parse::<CgroupPattern>().expect("pattern");
        let names = |p: CgroupPattern| -> Vec<String> {
            p.expand()
                .expect("expand")
                .into_iter()
                .map(|c| c.path.strip_prefix(&root).expect("under root").display().to_string())
                .collect()
        };
        assert_eq!(names(pat("*/pod*")), ["a.slice/pod1", "a.slice/pod2", "b.slice/pod3"]);
        assert_eq!(names(pat("a.slice/pod?/c1")), ["a.slice/pod1/c1", "a.slice/pod2/c1"]);
        assert_eq!(names(pat("a.slice/pod[2-9]")), ["a.slice/pod2"]);
        assert_eq!(names(pat("a.slice")), ["a.slice"]);
        assert!(names(pat("missing/*")).is_empty());
        assert!(names(pat("a.slice/missing")).is_empty());
        let ids = pat("*/pod*").expand().expect("expand");
        assert!(ids.iter().all(|c| c.id == std::fs::metadata(&c.path).expect("stat").ino()));
        std::fs::remove_dir_all(&root).expect("clean up");
    }
}
