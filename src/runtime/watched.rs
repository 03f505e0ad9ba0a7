//! Which file-system events concern a watched file. Directories are watched (editors,
//! Kubernetes and cert-manager replace files by rename, which a watch on the file itself misses),
//! but only events on the file itself count, and only writes, renames and removals: reads
//! (including the gateway's own), metadata changes and every other file in the directory (a log
//! written next to the config, the access log) are not changes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use notify::event::ModifyKind;
use notify::EventKind;

/// A file, as the names in its directory whose events concern it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct WatchedFile {
    /// The directory to watch.
    pub(crate) dir: PathBuf,
    /// The file's name, and when the file is a symlink into a sibling directory (a Kubernetes
    /// volume's `..data/file`), that directory's name, which is what an update renames.
    names: Vec<OsString>,
}

impl WatchedFile {
    /// The entries of `file`'s directory that stand for it.
    pub(crate) fn of(file: &Path) -> WatchedFile {
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let mut names: Vec<OsString> = file.file_name().map(OsString::from).into_iter().collect();
        if let Ok(target) = std::fs::read_link(file) {
            if target.is_relative() {
                if let Some(std::path::Component::Normal(first)) = target.components().next() {
                    if target.components().count() > 1 {
                        names.push(first.to_os_string());
                    }
                }
            }
        }
        WatchedFile { dir, names }
    }

    /// Whether `ev` is a change to this file: a write, rename or removal of one of its names.
    pub(crate) fn concerns(&self, ev: &notify::Event) -> bool {
        is_change(&ev.kind)
            && ev.paths.iter().any(|p| {
                p.parent().is_some_and(|d| same_dir(d, &self.dir))
                    && p.file_name()
                        .is_some_and(|n| self.names.iter().any(|m| m == n))
            })
    }
}

/// Writes, creations, renames and removals; not reads, not metadata.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Modify(m) => !matches!(m, ModifyKind::Metadata(_)),
        EventKind::Access(_) | EventKind::Other => false,
    }
}

/// Event paths are the watched directory joined with a name; `.` may come back as `./x` or `x`.
fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| {
        if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p.to_path_buf()
        }
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, CreateKind, DataChange, MetadataKind, RenameMode};

    use super::*;

    fn ev(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_changes_to_the_file_itself_count() {
        let w = WatchedFile::of(Path::new("/etc/fd/frontdesk.yaml"));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        assert!(w.concerns(&ev(write, "/etc/fd/frontdesk.yaml")));
        assert!(w.concerns(&ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "/etc/fd/frontdesk.yaml"
        )));
        assert!(w.concerns(&ev(
            EventKind::Create(CreateKind::File),
            "/etc/fd/frontdesk.yaml"
        )));
        assert!(!w.concerns(&ev(write, "/etc/fd/frontdesk.log")));
        assert!(!w.concerns(&ev(write, "/etc/other/frontdesk.yaml")));
        assert!(!w.concerns(&ev(
            EventKind::Access(AccessKind::Any),
            "/etc/fd/frontdesk.yaml"
        )));
        assert!(!w.concerns(&ev(
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            "/etc/fd/frontdesk.yaml"
        )));
        let rel = WatchedFile::of(Path::new("frontdesk.yaml"));
        assert!(rel.concerns(&ev(write, "./frontdesk.yaml")));
    }
}
