//! What the tests of the configuration share: temporary directories under `/tmp` (root-owned
//! and sticky on the test hosts, so that files made in them by root pass the walker) and the
//! guard of the tests that need root.
//!
//! A test that needs root (its files must be root's, or it changes owners) carries
//! `#[ignore = "needs root: run as root with --include-ignored"]` and calls [`require_root`]
//! first, which panics when not root: a run with `--include-ignored` by anyone else fails
//! instead of passing without testing anything.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory (mode 0755) under the temporary directory, removed when dropped.
#[derive(Debug)]
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "spawnd-config-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).unwrap();
        set_mode(&path, 0o755);
        TempDir(path)
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(super) fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub(super) fn make_dir(path: &Path, mode: u32) {
    fs::create_dir(path).unwrap();
    set_mode(path, mode);
}

/// A small shell script.
pub(super) fn make_file(path: &Path, mode: u32) {
    fs::write(path, "#!/bin/sh\nexit 0\n").unwrap();
    set_mode(path, mode);
}

/// The guard of a root-only test: panics unless the tests run as root (files made in the
/// temporary directory are root-owned only then).
#[track_caller]
pub(super) fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it makes root-owned files or changes owners); run it as root"
    );
}
