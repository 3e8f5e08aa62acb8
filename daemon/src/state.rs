//! The state directory: one small JSON record per server, written atomically after every
//! change, so that a restarted daemon can find its servers again.
//!
//! Layout: `<state_dir>/servers/<user>/<server or @default>.json`. One file per server keeps
//! every write O(1) however many servers run. Writes go to a temporary file in the same
//! directory, which is fsynced, renamed over the record, and the directory fsynced. Nothing
//! secret is recorded (no environment, no token).

use serde::{Deserialize, Serialize};
use spawnd_protocol::{ExitStatus, ServerId};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The record format's version; bump on incompatible changes.
pub const RECORD_VERSION: u32 = 1;

/// What is kept of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub user: String,
    pub server: String,
    pub uid: u32,
    /// The uid of the peer that started it.
    pub owner_uid: u32,
    pub instance: u64,
    pub pid: i32,
    /// The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the
    /// pid, it names the process for good.
    pub start_ticks: u64,
    pub cgroup: Option<PathBuf>,
    pub profile: String,
    pub port: Option<u16>,
    pub log_path: PathBuf,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// Set once the daemon saw the server exit (it stays until the hub stops it).
    pub exit: Option<ExitStatus>,
    pub exited_at: Option<u64>,
    pub interrupt_timeout_ms: u64,
    pub term_timeout_ms: u64,
    pub kill_timeout_ms: u64,
}

impl Record {
    pub fn id(&self) -> ServerId {
        ServerId::new(self.user.clone(), self.server.clone())
    }
}

/// A record that could not be read, and where it was moved.
#[derive(Debug)]
pub struct Unreadable {
    pub path: PathBuf,
    pub moved_to: Option<PathBuf>,
    pub error: String,
}

/// The `servers/` directory of the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl StateDir {
    /// Opens (creating) `<state_dir>/servers`.
    pub fn open(state_dir: &Path) -> io::Result<StateDir> {
        let root = state_dir.join("servers");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)?;
        Ok(StateDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, user: &str, server: &str) -> PathBuf {
        self.root
            .join(user)
            .join(format!("{}.json", crate::logs::server_file_stem(server)))
    }

    /// Writes a record atomically and durably.
    pub fn save(&self, record: &Record) -> io::Result<()> {
        let path = self.path(&record.user, &record.server);
        let dir = path.parent().unwrap_or(&self.root);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        let written = file.write_all(&bytes).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &path)?;
        sync_dir(dir)
    }

    /// Forgets a server (after it has been stopped).
    pub fn remove(&self, user: &str, server: &str) -> io::Result<()> {
        let path = self.path(user, server);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        let dir = path.parent().unwrap_or(&self.root);
        // Drop the user's directory when it is empty; fails harmlessly otherwise.
        if fs::remove_dir(dir).is_err() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Reads every record. A record that cannot be read or parsed is moved aside (renamed to
    /// `*.corrupt-<unix time>`) and reported, so it never keeps the daemon down.
    pub fn load_all(&self) -> (Vec<Record>, Vec<Unreadable>) {
        let mut records = Vec::new();
        let mut bad = Vec::new();
        let users = match fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) => {
                bad.push(Unreadable {
                    path: self.root.clone(),
                    moved_to: None,
                    error: e.to_string(),
                });
                return (records, bad);
            }
        };
        for user_dir in users.flatten() {
            let Ok(files) = fs::read_dir(user_dir.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                let name = file.file_name().to_string_lossy().into_owned();
                if name.ends_with(".json.tmp") {
                    // A write that never completed: the record it would have replaced is
                    // still there (or the server was never recorded).
                    let _ = fs::remove_file(&path);
                    continue;
                }
                if !name.ends_with(".json") {
                    continue;
                }
                match read_record(&path) {
                    Ok(r) => records.push(r),
                    Err(error) => {
                        let stamp = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        let aside = path.with_extension(format!("json.corrupt-{stamp}"));
                        let moved_to = fs::rename(&path, &aside).ok().map(|()| aside);
                        bad.push(Unreadable {
                            path,
                            moved_to,
                            error,
                        });
                    }
                }
            }
        }
        records.sort_by(|a, b| (&a.user, &a.server).cmp(&(&b.user, &b.server)));
        (records, bad)
    }
}

fn read_record(path: &Path) -> Result<Record, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if record.version != RECORD_VERSION {
        return Err(format!(
            "record version {} is not {RECORD_VERSION} (written by another spawnd version)",
            record.version
        ));
    }
    spawnd_protocol::validate_user_name(&record.user).map_err(|e| e.to_string())?;
    spawnd_protocol::validate_server_name(&record.server).map_err(|e| e.to_string())?;
    let expected = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let stem = format!("{}.json", crate::logs::server_file_stem(&record.server));
    if expected.as_deref() != Some(stem.as_str())
        || path
            .parent()
            .and_then(Path::file_name)
            .map(|u| u.to_string_lossy().into_owned())
            != Some(record.user.clone())
    {
        return Err("record does not match its file name".into());
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str, server: &str) -> Record {
        Record {
            version: RECORD_VERSION,
            user: user.into(),
            server: server.into(),
            uid: 1000,
            owner_uid: 999,
            instance: 7,
            pid: 1234,
            start_ticks: 99,
            cgroup: Some("/sys/fs/cgroup/x".into()),
            profile: "default".into(),
            port: Some(8888),
            log_path: "/var/log/spawnd/a/@default.log".into(),
            started_at: 1,
            exit: None,
            exited_at: None,
            interrupt_timeout_ms: 1,
            term_timeout_ms: 2,
            kill_timeout_ms: 3,
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spawnd-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn save_load_remove() {
        let d = tempdir("slr");
        let s = StateDir::open(&d).unwrap();
        let mut a = record("alice", "");
        s.save(&a).unwrap();
        s.save(&record("alice", "gpu")).unwrap();
        s.save(&record("bob", "")).unwrap();
        a.exit = Some(ExitStatus::Code(3));
        s.save(&a).unwrap();
        let (all, bad) = s.load_all();
        assert!(bad.is_empty());
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], a);
        assert!(d.join("servers/alice/@default.json").exists());
        s.remove("alice", "").unwrap();
        s.remove("alice", "").unwrap();
        assert_eq!(s.load_all().0.len(), 2);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_records_are_moved_aside() {
        let d = tempdir("corrupt");
        let s = StateDir::open(&d).unwrap();
        s.save(&record("alice", "")).unwrap();
        fs::create_dir_all(d.join("servers/bob")).unwrap();
        fs::write(d.join("servers/bob/@default.json"), b"{not json").unwrap();
        // A record whose content names another server than its file.
        let mut wrong = record("carol", "x");
        wrong.user = "mallory".into();
        fs::create_dir_all(d.join("servers/carol")).unwrap();
        fs::write(
            d.join("servers/carol/x.json"),
            serde_json::to_vec(&wrong).unwrap(),
        )
        .unwrap();
        fs::write(d.join("servers/alice/half.json.tmp"), b"{").unwrap();
        let (all, bad) = s.load_all();
        assert_eq!(all.len(), 1);
        assert_eq!(bad.len(), 2, "{bad:?}");
        for b in &bad {
            let moved = b.moved_to.as_ref().unwrap();
            assert!(moved.exists() && !b.path.exists(), "{b:?}");
        }
        assert!(!d.join("servers/alice/half.json.tmp").exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
