//! Per-server log files. The daemon opens them as root inside root-owned directories, without
//! following symlinks, and hands the server an open descriptor, never a path it could swap.

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Group, Uid, fchown};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The file stem of the default server (`@` is never allowed in server names, so it cannot
/// collide with a server's name).
const DEFAULT_SERVER_STEM: &str = "@default";

/// The file name used for a server (log, state record, cgroup): the server name, or
/// `@default` for the default server. [`server_of_file_stem`] reads it back.
pub fn server_file_stem(server: &str) -> &str {
    if server.is_empty() {
        DEFAULT_SERVER_STEM
    } else {
        server
    }
}

/// The server a file stem names: the inverse of [`server_file_stem`].
pub fn server_of_file_stem(stem: &str) -> &str {
    if stem == DEFAULT_SERVER_STEM {
        ""
    } else {
        stem
    }
}

/// `<log_dir>/<user>/<server>.log`.
pub fn log_path(log_dir: &Path, user: &str, server: &str) -> PathBuf {
    log_dir
        .join(user)
        .join(format!("{}.log", server_file_stem(server)))
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn open_dir(dir: impl AsFd, name: &str) -> io::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_io)
}

/// Opens (creating and rotating) the log of `server` for `user`, for appending. The user's
/// directory is root-owned; it is readable by the user's group only when that group is the
/// user's private group (named like the user), else by root alone. `keep` older generations
/// are kept as `.1` … `.keep`; an empty current log is reused instead of rotated.
pub fn open_server_log(
    log_dir: &Path,
    user: &str,
    user_gid: u32,
    server: &str,
    keep: u32,
) -> io::Result<(OwnedFd, PathBuf)> {
    let root = nix::fcntl::open(
        log_dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno_io)?;
    match mkdirat(&root, user, Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(errno_io(e)),
    }
    let dir = open_dir(&root, user)?;
    let st = fstat(&dir).map_err(errno_io)?;
    if st.st_uid != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "log directory {} is owned by uid {}, not root; remove it so spawnd can recreate it",
                log_dir.join(user).display(),
                st.st_uid
            ),
        ));
    }
    let private_group = Group::from_gid(Gid::from_raw(user_gid))
        .ok()
        .flatten()
        .is_some_and(|g| g.name == user);
    let (gid, dir_mode, file_mode) = if private_group {
        (user_gid, 0o750, 0o640)
    } else {
        (0, 0o700, 0o600)
    };
    fchown(&dir, Some(Uid::from_raw(0)), Some(Gid::from_raw(gid))).map_err(errno_io)?;
    fchmod(&dir, Mode::from_bits_truncate(dir_mode)).map_err(errno_io)?;

    let stem = server_file_stem(server);
    let name = format!("{stem}.log");
    // An empty log (a start that failed before the server wrote anything) is reused rather
    // than rotated, so that failed retries do not push the last real log out.
    let current_is_empty = nix::sys::stat::fstatat(
        &dir,
        name.as_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0);
    if keep > 0 && !current_is_empty {
        for generation in (1..keep).rev() {
            let from = format!("{name}.{generation}");
            let to = format!("{name}.{}", generation + 1);
            match renameat(&dir, from.as_str(), &dir, to.as_str()) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(errno_io(e)),
            }
        }
        match renameat(&dir, name.as_str(), &dir, format!("{name}.1").as_str()) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(errno_io(e)),
        }
    }
    // Never O_TRUNC here: the file is checked first, then emptied through the descriptor (a
    // hard link placed under this name must not have its other names' file emptied).
    let flags = OFlag::O_WRONLY
        | OFlag::O_CREAT
        | OFlag::O_APPEND
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY;
    let file = openat(
        &dir,
        name.as_str(),
        flags,
        Mode::from_bits_truncate(file_mode),
    )
    .map_err(errno_io)?;
    let path = log_dir.join(user).join(&name);
    check_plain_file(&file, &path)?;
    if keep == 0 {
        nix::unistd::ftruncate(&file, 0).map_err(errno_io)?;
    }
    fchown(&file, Some(Uid::from_raw(0)), Some(Gid::from_raw(gid))).map_err(errno_io)?;
    fchmod(&file, Mode::from_bits_truncate(file_mode)).map_err(errno_io)?;
    Ok((file, path))
}

/// A log must be a regular file with exactly one name: a hard link (another name for a file
/// elsewhere) is never written, emptied or read back.
fn check_plain_file(file: &impl AsFd, path: &Path) -> io::Result<nix::sys::stat::FileStat> {
    let st = fstat(file).map_err(errno_io)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("log file {} is not a plain file; remove it", path.display()),
        ));
    }
    if st.st_nlink != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "log file {} has {} names (hard links), so it is another file too; remove it",
                path.display(),
                st.st_nlink
            ),
        ));
    }
    Ok(st)
}

/// The file (device, inode) of an open log: how a restarted daemon recognises a server's log.
pub fn file_id(file: &impl AsFd) -> io::Result<(u64, u64)> {
    let st = fstat(file).map_err(errno_io)?;
    Ok((st.st_dev, st.st_ino))
}

/// Whether the log at `path` is still the server's (`id` from [`file_id`]) and past `max` (its
/// size, or the space it holds): a stat, no descriptor.
pub fn is_over(path: &Path, id: (u64, u64), max: u64) -> bool {
    nix::sys::stat::lstat(path).is_ok_and(|st| {
        (st.st_dev, st.st_ino) == id && (st.st_size as u64 > max || allocated(&st) > max)
    })
}

fn allocated(st: &nix::sys::stat::FileStat) -> u64 {
    (st.st_blocks as u64).saturating_mul(512)
}

/// Cuts a running server's log past `max` (see [`cut`]): only while the file under `path` is
/// still the one the server was started with (`id` from [`file_id`]) and a regular root-owned
/// file. Its link count does not matter here: a second name for it (possible only where
/// `fs.protected_hardlinks` is off) must not exempt it from the limit.
pub fn cut_if_over(path: &Path, id: (u64, u64), max: u64) -> io::Result<Option<Cut>> {
    if !is_over(path, id, max) {
        return Ok(None);
    }
    let file = nix::fcntl::open(
        path,
        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(errno_io)?;
    let st = fstat(&file).map_err(errno_io)?;
    if (st.st_dev, st.st_ino) != id || st.st_uid != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG
    {
        return Ok(None);
    }
    cut(&file, max)
}

/// What [`cut`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The oldest bytes were removed from the file (FALLOC_FL_COLLAPSE_RANGE): the newest
    /// part stays.
    Collapsed(u64),
    /// The file system cannot remove a file's start: the file was emptied.
    Truncated(u64),
    /// Only space allocated past the end was freed (this many bytes).
    Unallocated(u64),
}

/// Cuts a log that grew past `max` bytes: removes its oldest part so that about half of `max`
/// stays (where the file system can, else empties it), and appends a line saying so. Space
/// allocated past the log's end (`fallocate` with `FALLOC_FL_KEEP_SIZE`, which a server can do
/// through its descriptor without changing the size) is freed first. The server keeps writing
/// through its own descriptor, at the new end (O_APPEND).
pub fn cut(file: &OwnedFd, max: u64) -> io::Result<Option<Cut>> {
    let st = fstat(file).map_err(errno_io)?;
    let size = st.st_size as u64;
    let held = allocated(&st);
    if size <= max && held <= max {
        return Ok(None);
    }
    let block = nix::sys::statfs::fstatfs(file)
        .map_err(errno_io)?
        .block_size()
        .max(1) as u64;
    // Space held past the end beyond what block rounding and a file system's own
    // preallocation make (which no plain writer exceeds by half of `max`): a server allocated it
    // through its descriptor (fallocate with FALLOC_FL_KEEP_SIZE). Truncating to the same size
    // frees it on ext4; elsewhere it is punched out. Bytes that server appends meanwhile may be
    // lost: it is the server's own log, and only its own doing leads here.
    let preallocated = held_past_end(size, held, block, max);
    if preallocated {
        nix::unistd::ftruncate(file, size as libc::off_t).map_err(errno_io)?;
        match nix::fcntl::fallocate(
            file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            size as libc::off_t,
            held.min(i64::MAX as u64 - size) as libc::off_t,
        ) {
            Ok(()) | Err(Errno::EOPNOTSUPP | Errno::EFBIG | Errno::EINVAL) => {}
            Err(e) => return Err(errno_io(e)),
        }
    }
    if size <= max {
        return Ok(preallocated.then(|| Cut::Unallocated(held.saturating_sub(size))));
    }
    // Whole blocks only, and never the file's end (the collapse must leave data behind it).
    let remove = (size - max / 2) / block * block;
    let done = if remove > 0 {
        match nix::fcntl::fallocate(
            file,
            nix::fcntl::FallocateFlags::FALLOC_FL_COLLAPSE_RANGE,
            0,
            remove as libc::off_t,
        ) {
            Ok(()) => Cut::Collapsed(remove),
            Err(Errno::EOPNOTSUPP | Errno::EINVAL) => truncate(file, size)?,
            Err(e) => return Err(errno_io(e)),
        }
    } else {
        truncate(file, size)?
    };
    let removed = match done {
        Cut::Collapsed(n) | Cut::Truncated(n) | Cut::Unallocated(n) => n,
    };
    let line = format!(
        "[spawnd: this log passed log_max_size ({max} bytes): its oldest {removed} bytes were \
         removed]\n"
    );
    // O_APPEND: at the end. A note that cannot be written is no reason to fail the cut.
    let _ = nix::unistd::write(file, line.as_bytes());
    Ok(Some(done))
}

/// Whether a log of `size` bytes holding `held` bytes of disk (blocks of `block` bytes) holds
/// space past its end that a server allocated on purpose: more than `max` in all, and more than
/// half of `max` beyond what block rounding (and a file system's own preallocation) makes.
fn held_past_end(size: u64, held: u64, block: u64, max: u64) -> bool {
    held > max && held > size.div_ceil(block) * block + max / 2
}

fn truncate(file: &OwnedFd, size: u64) -> io::Result<Cut> {
    nix::unistd::ftruncate(file, 0).map_err(errno_io)?;
    Ok(Cut::Truncated(size))
}

/// The last `lines` lines of a log, reading at most `max_bytes` from its end. Returns the lines
/// and whether fewer were returned than asked because of `max_bytes`.
pub fn tail(path: &Path, lines: usize, max_bytes: u64) -> io::Result<(Vec<String>, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let st = check_plain_file(&file, path)?;
    if st.st_uid != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("log file {} is not root's; remove it", path.display()),
        ));
    }
    let len = file.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.take(max_bytes).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut all: Vec<&str> = text.split_terminator('\n').collect();
    // The first line is partial when we did not start at the beginning of the file.
    let cut_partial = start > 0 && !all.is_empty();
    if cut_partial {
        all.remove(0);
    }
    let truncated = cut_partial && all.len() < lines;
    let from = all.len().saturating_sub(lines);
    Ok((
        all[from..].iter().map(|l| l.to_string()).collect(),
        truncated,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn only_space_a_server_allocated_on_purpose_is_taken_back() {
        const K: u64 = 1024;
        const M: u64 = 1024 * K;
        // Block rounding of plain logs, small and past the limit: never.
        assert!(!held_past_end(5 * M + 6, 5 * M + 4 * K, 4 * K, M));
        assert!(!held_past_end(M - 1, M, 4 * K, M));
        assert!(!held_past_end(0, 0, 4 * K, M));
        // A file system's own preallocation below half of the limit: never.
        assert!(!held_past_end(5 * M, 5 * M + 256 * K, 4 * K, M));
        // fallocate(FALLOC_FL_KEEP_SIZE) of 256 MiB behind a short log, or behind a long one.
        assert!(held_past_end(135, 256 * M, 4 * K, M));
        assert!(held_past_end(5 * M, 261 * M, 4 * K, M));
    }

    #[test]
    fn stems() {
        assert_eq!(server_file_stem(""), "@default");
        assert_eq!(server_file_stem("gpu"), "gpu");
        assert_eq!(
            log_path(Path::new("/l"), "al", ""),
            Path::new("/l/al/@default.log")
        );
    }

    #[test]
    #[ignore = "needs root: run as root with --include-ignored"]
    fn rotation_keeps_generations_and_skips_empty_logs() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root: the per-user log directory must be owned by root; run as root with \
             --include-ignored"
        );
        let root = std::env::temp_dir().join(format!("spawnd-rot-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let user_dir = root.join("alice");
        let open = |n: u32| {
            let (fd, _) = open_server_log(&root, "alice", 0, "s", 3).unwrap();
            let mut f = std::fs::File::from(fd);
            if n > 0 {
                writeln!(f, "run {n}").unwrap();
            }
        };
        let read = |name: &str| std::fs::read_to_string(user_dir.join(name)).unwrap_or_default();
        open(1);
        open(2);
        // Two failed attempts that wrote nothing: run 2 stays the current log, run 1 the last.
        open(0);
        open(0);
        assert_eq!(read("s.log"), "");
        assert_eq!(read("s.log.1"), "run 2\n");
        assert_eq!(read("s.log.2"), "run 1\n");
        assert!(!user_dir.join("s.log.3").exists());
        // The next real run reuses the empty file; the one after rotates as usual.
        open(3);
        open(4);
        assert_eq!(read("s.log"), "run 4\n");
        assert_eq!(read("s.log.1"), "run 3\n");
        assert_eq!(read("s.log.2"), "run 2\n");
        assert_eq!(read("s.log.3"), "run 1\n");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    #[ignore = "needs root: run as root with --include-ignored"]
    fn tail_returns_last_lines_and_flags_truncation() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root: tail reads only a log file owned by root; run as root with \
             --include-ignored"
        );
        let dir = std::env::temp_dir().join(format!("spawnd-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.log");
        let mut f = std::fs::File::create(&p).unwrap();
        for i in 0..100 {
            writeln!(f, "line {i}").unwrap();
        }
        let (l, t) = tail(&p, 3, 1 << 20).unwrap();
        assert_eq!(l, vec!["line 97", "line 98", "line 99"]);
        assert!(!t);
        let (l, t) = tail(&p, 50, 40).unwrap();
        assert!(t && l.len() < 50 && l.last().unwrap() == "line 99", "{l:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
