//! The path safety walker: the guard against root being tricked into executing, reading or
//! writing something a user controls. It is a security boundary; its tests are in
//! `paths/tests.rs`.
//!
//! [`check_executable`], [`check_private_dir`] and [`check_config_file`] walk a path one
//! component at a time from `/`, following symbolic links themselves (at most
//! `MAX_SYMLINK_HOPS`, as the kernel does), so that every directory crossed on the way is
//! checked: the parents of every intermediate link, the directories of its target, and so on.
//! A `..` goes up from the directory really reached, as in the kernel, not from the text.
//!
//! What a successful walk guarantees, at the time of the walk:
//! - every directory crossed is owned by root and not writable by group or others, unless it
//!   is root-owned and sticky (like `/tmp`: nobody else can then replace root's entries in it);
//! - every symbolic link followed is owned by root;
//! - the file at the end is of the kind its role asks for ([`FileRole`]), owned by root and
//!   not writable by group or others (an executable also has an execute bit);
//! - for an executable, the directory that directly holds it, and the one that holds each link
//!   to it, is not writable by group or others at all, sticky or not.
//!
//! A failure is a [`PathError`] whose [`PathProblem`] says, from the value alone, whether the
//! path is absent, unusable (a broken install) or unsafe. Its message names the offending path
//! and says what to run.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::accounts::user_and_uid;

/// Same limit as the kernel's (ELOOP).
const MAX_SYMLINK_HOPS: u32 = 40;

/// What kind of problem a path has: it decides whether a start fails as a broken install or is
/// refused as unsafe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// Nothing is there: a component does not exist, or one on the way is not a directory.
    Absent,
    /// Something is there but cannot serve: the wrong type of file, no execute bit, a loop of
    /// symbolic links, or it cannot be inspected.
    Unusable,
    /// Someone other than root could change it (or what it leads to).
    Unsafe,
}

/// Why a path failed the file-system checks. Displays as a message for the operator that
/// names the offending path and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PathError {
    pub problem: PathProblem,
    /// The path the message is about (a directory on the way, a link, the file itself).
    pub path: PathBuf,
    pub message: String,
}

impl PathError {
    fn new(problem: PathProblem, path: &Path, message: String) -> PathError {
        PathError {
            problem,
            path: path.to_path_buf(),
            message,
        }
    }
}

/// The end of a successful walk: the fully resolved path and what `lstat` said of it.
#[derive(Debug)]
pub(super) struct Walked {
    pub(super) resolved: PathBuf,
    pub(super) meta: fs::Metadata,
}

/// One file that will be executed: it and every directory above it must be owned by root and
/// not writable by group or others; it must be a regular file with an execute bit. This checks
/// the file alone; a profile's command goes through [`check_program`](super::check_program),
/// which applies it to every file of the chain (`#!` interpreters, what `env` finds, the ELF
/// interpreter).
///
/// Symbolic links are followed one hop at a time: every link must be owned by root, and every
/// directory crossed on the way (the link's own parents, the directories of its target, and so
/// on) must pass. A directory writable by group or others is accepted on the way only when it
/// is root-owned and sticky (like `/tmp`), since nobody else can then replace the root-owned
/// entry inside it. The directory that directly holds the file (and the one that holds each
/// link to it) gets no sticky exception: others could put files beside the program, which a
/// script's interpreter (Python's `sys.path[0]`) or the dynamic loader (`$ORIGIN`) load.
pub(super) fn check_executable(path: &Path) -> Result<Walked, PathError> {
    walk(path, FileRole::Executable)
}

/// A directory the daemon writes as root (socket dir, state dir, log root): must be owned by
/// root and not writable by group or others; every ancestor (and every symbolic link on the
/// way) must be owned by root and either not writable by group or others or sticky (like
/// `/tmp`). Does not create anything. The error names the offending path and says what to fix.
pub fn check_private_dir(path: &Path) -> Result<(), PathError> {
    walk(path, FileRole::PrivateDir).map(drop)
}

/// The configuration file: whoever can change it decides who is an admin and what runs as
/// every user, so it must be a regular file owned by root and not writable by group or others,
/// reached through root-owned directories (as for [`check_private_dir`]). A relative path is
/// taken from the current directory.
pub fn check_config_file(path: &Path) -> Result<(), PathError> {
    let path = std::path::absolute(path).map_err(|e| {
        PathError::new(
            PathProblem::Unusable,
            path,
            format!("cannot resolve {}: {e}", path.display()),
        )
    })?;
    walk(&path, FileRole::ConfigFile).map(drop)
}

/// What the file at the end of a walk is for: it decides what that file must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileRole {
    /// A program root executes as a user ([`check_executable`]).
    Executable,
    /// A directory root writes in ([`check_private_dir`]).
    PrivateDir,
    /// The configuration file root reads ([`check_config_file`]).
    ConfigFile,
}

/// One component of a path still to walk: the walk does `..` itself, on the directory it has
/// really reached.
#[derive(Debug)]
enum WalkStep {
    Up,
    Name(OsString),
}

fn walk_steps(path: &Path) -> Vec<WalkStep> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(WalkStep::Name(name.to_os_string())),
            Component::ParentDir => Some(WalkStep::Up),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn walk(path: &Path, role: FileRole) -> Result<Walked, PathError> {
    if !path.is_absolute() {
        return Err(PathError::new(
            PathProblem::Unsafe,
            path,
            format!(
                "{} is not an absolute path; give its full path",
                path.display()
            ),
        ));
    }
    let root = Path::new("/");
    let root_meta = inspect(root)?;
    check_ancestor(root, &root_meta)?;

    // `current` is always a fully resolved directory that has passed the ancestor checks;
    // `current_meta` is what lstat said of it.
    let mut current = PathBuf::from("/");
    let mut current_meta = root_meta.clone();
    let mut pending: VecDeque<WalkStep> = walk_steps(path).into();
    let mut hops = 0;
    while let Some(step) = pending.pop_front() {
        let name = match step {
            WalkStep::Up => {
                current.pop();
                current_meta = inspect(&current)?;
                continue;
            }
            WalkStep::Name(name) => name,
        };
        let candidate = current.join(&name);
        let meta = inspect(&candidate)?;
        let last = pending.is_empty();
        if last && role == FileRole::Executable {
            // The file itself, or a link to it: whoever can add entries beside it decides
            // what the program loads from its own directory.
            check_holder(&current, &current_meta, &candidate)?;
        }
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(PathError::new(
                    PathProblem::Unusable,
                    path,
                    format!(
                        "{} has too many levels of symbolic links; point it at the real file",
                        path.display()
                    ),
                ));
            }
            if meta.uid() != 0 {
                return Err(not_root_owned(&candidate, meta.uid(), true));
            }
            let link = fs::read_link(&candidate).map_err(|e| {
                PathError::new(
                    PathProblem::Unusable,
                    &candidate,
                    format!("cannot read the symbolic link {}: {e}", candidate.display()),
                )
            })?;
            if link.is_absolute() {
                current = PathBuf::from("/");
                current_meta = root_meta.clone();
            }
            let mut resolved: VecDeque<WalkStep> = walk_steps(&link).into();
            resolved.extend(pending);
            pending = resolved;
            continue;
        }
        if last {
            check_final(&candidate, &meta, role)?;
            return Ok(Walked {
                resolved: candidate,
                meta,
            });
        }
        if !file_type.is_dir() {
            return Err(PathError::new(
                PathProblem::Absent,
                &candidate,
                format!("{} is not a directory; fix the path", candidate.display()),
            ));
        }
        check_ancestor(&candidate, &meta)?;
        current = candidate;
        current_meta = meta;
    }
    // The path ended on a directory already checked as an ancestor ("/", or a trailing "..").
    check_final(&current, &current_meta, role)?;
    Ok(Walked {
        resolved: current,
        meta: current_meta,
    })
}

pub(super) fn inspect(path: &Path) -> Result<fs::Metadata, PathError> {
    fs::symlink_metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            PathError::new(
                PathProblem::Absent,
                path,
                format!("{} does not exist", path.display()),
            )
        } else {
            PathError::new(
                PathProblem::Unusable,
                path,
                format!("cannot inspect {}: {e}", path.display()),
            )
        }
    })
}

fn not_root_owned(path: &Path, uid: u32, link: bool) -> PathError {
    PathError::new(
        PathProblem::Unsafe,
        path,
        format!(
            "{} is owned by {}, not root; run chown {}root {}",
            path.display(),
            user_and_uid(uid),
            if link { "-h " } else { "" },
            path.display()
        ),
    )
}

fn group_or_other_writable(path: &Path, mode: u32) -> PathError {
    PathError::new(
        PathProblem::Unsafe,
        path,
        format!(
            "{} is writable by group or others (mode {:04o}); run chmod go-w {}",
            path.display(),
            mode & 0o7777,
            path.display()
        ),
    )
}

/// A directory on the way: root-owned, and not writable by group or others unless sticky.
fn check_ancestor(path: &Path, meta: &fs::Metadata) -> Result<(), PathError> {
    if meta.uid() != 0 {
        return Err(not_root_owned(path, meta.uid(), false));
    }
    let mode = meta.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(group_or_other_writable(path, mode));
    }
    Ok(())
}

/// The directory that directly holds a program (or a link to it), already checked as an
/// ancestor: not writable by group or others, sticky or not.
fn check_holder(dir: &Path, meta: &fs::Metadata, file: &Path) -> Result<(), PathError> {
    let mode = meta.mode();
    if mode & 0o022 == 0 {
        return Ok(());
    }
    Err(PathError::new(
        PathProblem::Unsafe,
        dir,
        format!(
            "{} holds {} and is writable by group or others (mode {:04o}), so others could \
             put files beside it that it loads (a script's modules, $ORIGIN libraries); run \
             chmod go-w {}, or move the program to a directory only root can write",
            dir.display(),
            file.display(),
            mode & 0o7777,
            dir.display()
        ),
    ))
}

fn check_final(path: &Path, meta: &fs::Metadata, role: FileRole) -> Result<(), PathError> {
    let mode = meta.mode();
    let unusable = |message: String| Err(PathError::new(PathProblem::Unusable, path, message));
    match role {
        FileRole::Executable => {
            if !meta.file_type().is_file() {
                return unusable(format!(
                    "{} is not a regular file; point the command at the executable itself",
                    path.display()
                ));
            }
            if meta.uid() != 0 {
                return Err(not_root_owned(path, meta.uid(), false));
            }
            if mode & 0o022 != 0 {
                return Err(group_or_other_writable(path, mode));
            }
            if mode & 0o111 == 0 {
                return unusable(format!(
                    "{} is not executable (mode {:04o}); run chmod 755 {}",
                    path.display(),
                    mode & 0o7777,
                    path.display()
                ));
            }
        }
        FileRole::ConfigFile => {
            if !meta.file_type().is_file() {
                return unusable(format!("{} is not a regular file", path.display()));
            }
            if meta.uid() != 0 {
                return Err(not_root_owned(path, meta.uid(), false));
            }
            if mode & 0o022 != 0 {
                return Err(group_or_other_writable(path, mode));
            }
        }
        FileRole::PrivateDir => {
            if !meta.file_type().is_dir() {
                return unusable(format!(
                    "{} is not a directory; remove it or choose another path",
                    path.display()
                ));
            }
            if meta.uid() != 0 {
                return Err(not_root_owned(path, meta.uid(), false));
            }
            if mode & 0o022 != 0 {
                return Err(group_or_other_writable(path, mode));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
