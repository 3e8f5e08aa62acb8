//! The state directory: one small JSON record per server, written atomically after every
//! change, so that a restarted daemon can find its servers again.
//!
//! Layout: `<state_dir>/servers/<user>/<server or @default>.json`. One file per server keeps
//! every write O(1) however many servers run. Nothing secret is recorded (no environment, no
//! token).
//!
//! A write goes to a temporary file in the same directory, which is renamed over the record:
//! atomic, and, once `save` returns, visible to any later daemon, since a daemon that crashes
//! or is killed leaves the kernel's page cache behind. Making it durable against a crash of the
//! whole machine (fsync of the file and of its directory) is left to a background thread that
//! takes every record written meanwhile in one batch: a machine crash ends every server too,
//! so no request needs to wait for the disk (on a busy disk that wait was the largest part of
//! a start). [`StateDir::flush`] waits for the thread to catch up.

use serde::{Deserialize, Serialize};
use spawnd_protocol::{ExitStatus, ServerId};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

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
    /// The log file (device, inode) the server writes, so that a restarted daemon can watch
    /// its size again (only while the file under the log's name is still that one).
    #[serde(default)]
    pub log_file: Option<(u64, u64)>,
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
    syncer: Syncer,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Work for the background thread that makes writes durable.
#[derive(Debug)]
enum SyncJob {
    /// A written record (already renamed into place), by path: holding its descriptor until
    /// the fsync would let a backlog on a slow disk use up the daemon's descriptors.
    File(PathBuf),
    /// A directory whose entries changed (a record removed).
    Dir(PathBuf),
    /// Answer once everything sent before is durable.
    Flush(mpsc::Sender<()>),
}

/// The sender to the background thread, started at the first write (after the daemon has
/// dropped its capabilities, which are per thread: a thread started earlier would keep them).
#[derive(Debug, Clone, Default)]
struct Syncer {
    tx: std::sync::Arc<OnceLock<Option<mpsc::Sender<SyncJob>>>>,
}

impl Syncer {
    /// Queues a job. Without the thread (it could not be started) the job is done here.
    fn send(&self, root: &Path, job: SyncJob) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let root = root.to_path_buf();
            std::thread::Builder::new()
                .name("spawnd-fsync".into())
                .spawn(move || sync_loop(&root, &rx))
                .map_err(|e| tracing::warn!("no thread for state fsyncs, doing them inline: {e}"))
                .ok()
                .map(|_| tx)
        });
        let job = match tx {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        sync_batch(root, vec![job]);
    }
}

fn sync_loop(root: &Path, rx: &mpsc::Receiver<SyncJob>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        sync_batch(root, batch);
    }
}

/// Makes a batch durable: each file once (a record written twice is synced once), then each
/// directory once, then the root (which gains and loses the users' directories); answers the
/// flushes last.
fn sync_batch(root: &Path, batch: Vec<SyncJob>) {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut flushes = Vec::new();
    for job in batch {
        match job {
            SyncJob::File(path) => {
                if let Some(dir) = path.parent() {
                    dirs.push(dir.to_path_buf());
                }
                files.push(path);
            }
            SyncJob::Dir(dir) => dirs.push(dir),
            SyncJob::Flush(done) => flushes.push(done),
        }
    }
    files.sort();
    files.dedup();
    for path in files {
        // fsync flushes the file, whichever descriptor it is called on. A record removed or
        // replaced since is gone or queued itself.
        match File::open(&path).and_then(|f| f.sync_all()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(
                "could not make the server record {} durable (fsync: {e}); it is written, but \
                 a machine crash could lose it: check the disk",
                path.display()
            ),
            Ok(()) => {}
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs.push(root.to_path_buf());
    for dir in dirs {
        match sync_dir(&dir) {
            // A user's directory that was removed since: nothing left to sync in it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!("could not fsync {}: {e}; check the disk", dir.display()),
            Ok(()) => {}
        }
    }
    for done in flushes {
        let _ = done.send(());
    }
}

impl StateDir {
    /// Opens (creating) `<state_dir>/servers`.
    pub fn open(state_dir: &Path) -> io::Result<StateDir> {
        let root = state_dir.join("servers");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)?;
        Ok(StateDir {
            root,
            syncer: Syncer::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Moves a server's record aside (`<record>.<why>-<time>`, kept for the operator), so that
    /// no later daemon reads it again. Returns where it went.
    pub fn set_aside(&self, user: &str, server: &str, why: &str) -> Option<PathBuf> {
        let path = self.path(user, server);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = path.with_extension(format!("json.{why}-{stamp}"));
        fs::rename(&path, &aside).ok().map(|()| aside)
    }

    fn path(&self, user: &str, server: &str) -> PathBuf {
        self.root
            .join(user)
            .join(format!("{}.json", crate::logs::server_file_stem(server)))
    }

    /// Writes a record atomically; it is made durable in the background (see the module).
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
        if let Err(e) = file.write_all(&bytes) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        drop(file);
        self.syncer.send(&self.root, SyncJob::File(path));
        Ok(())
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
            self.syncer
                .send(&self.root, SyncJob::Dir(dir.to_path_buf()));
        } else {
            self.syncer
                .send(&self.root, SyncJob::Dir(self.root.clone()));
        }
        Ok(())
    }

    /// Waits (at most `timeout`) until every write so far is durable; false on timeout.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.syncer.send(&self.root, SyncJob::Flush(tx));
        rx.recv_timeout(timeout).is_ok()
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
            log_file: Some((1, 2)),
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
    fn writes_are_visible_at_once_and_flush_waits_for_the_fsyncs() {
        let d = tempdir("flush");
        let s = StateDir::open(&d).unwrap();
        // A clone shares the background thread: both writers' records are flushed.
        let s2 = s.clone();
        let fds = || fs::read_dir("/proc/self/fd").unwrap().count();
        let before = fds();
        for i in 0..300 {
            s.save(&record("alice", &format!("s{i}"))).unwrap();
            s2.save(&record("bob", &format!("s{i}"))).unwrap();
            // Visible before any fsync: a restarted daemon reads the page cache.
            assert!(d.join(format!("servers/bob/s{i}.json")).exists());
        }
        // The fsync backlog holds paths, not descriptors (other tests run alongside: margin).
        let during = fds();
        assert!(
            during < before + 40,
            "{during} descriptors open after 600 writes, {before} before"
        );
        s.remove("bob", "s0").unwrap();
        assert!(s.flush(Duration::from_secs(30)), "flush did not answer");
        assert!(s2.flush(Duration::from_secs(30)), "flush did not answer");
        let (all, bad) = s.load_all();
        assert!(bad.is_empty());
        assert_eq!(all.len(), 599);
        // No temporary file is left behind.
        let tmp = fs::read_dir(d.join("servers/alice"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(tmp, 0);
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
