//! What really runs when a profile's command is executed, checked as a whole.
//!
//! Executing `/opt/x/bin/jupyterhub-singleuser` does not run only that file: its `#!` line names
//! an interpreter (itself perhaps a script, or `env`, which searches PATH), and the ELF program
//! that finally runs names its dynamic loader (PT_INTERP). Whoever can change any file of that
//! chain runs code as every user the profile starts. [`check_program`] follows the chain the
//! way the kernel and `env` do, and applies to every file of it the rules of `check_executable`:
//! root-owned and not writable by group or others, like every directory above it (sticky
//! directories excepted on the way), every symbolic link root-owned, and the directory that
//! directly holds the file (or a link to it) not writable by group or others at all.
//!
//! - `#!` lines are parsed as `binfmt_script` does: the first [`BINPRM_BUF_SIZE`] bytes, blanks
//!   (spaces, tabs) after `#!` skipped, the interpreter up to the next blank, and the rest of the
//!   line (trailing blanks trimmed) as one optional argument. A relative interpreter is refused
//!   (the kernel would resolve it against the server's working directory, the user's home), and
//!   so are more than [`MAX_INTERPRETERS`] nested interpreters.
//! - `env` (an interpreter or command whose name, as named or resolved, is `env`) runs its first
//!   argument, searched in the profile's `path` (the server's PATH: neither the profile's `env`
//!   nor the hub may set PATH). Options (`-S`, `-i`, anything starting with `-`) and assignments
//!   (`NAME=value`) are refused: name the interpreter directly. The search is `execvp`'s: every
//!   PATH directory before the program found must be one where nobody but root can add it (not
//!   writable by group or others, sticky or not, nor creatable by them when missing), and a
//!   program found that someone might not be allowed to execute (not executable by everyone, or
//!   on a `noexec` mount) does not end the search: the next one is checked too.
//! - The PT_INTERP of every ELF file of the chain is checked like the files (the kernel does
//!   not follow the loader's own PT_INTERP, and neither does this).
//!
//! A file or interpreter that is missing or cannot run is a broken install
//! ([`ProgramProblem::CannotRun`]); one that someone other than root could change, or that
//! cannot be checked, is refused ([`ProgramProblem::Unsafe`]).

use super::accounts::user_and_uid;
use super::paths::{PathError, PathProblem, Walked, check_executable, inspect};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How many bytes of a file the kernel reads to recognise it (`BINPRM_BUF_SIZE`).
pub const BINPRM_BUF_SIZE: usize = 256;
/// Nested `#!` interpreters accepted for one exec (`BINPRM_MAX_RECURSION`; current kernels
/// accept one more).
pub const MAX_INTERPRETERS: usize = 4;
/// Programs found through `env` in one chain (each is a new exec; this only ends loops).
pub const MAX_ENV_HOPS: usize = 4;
/// The kernel refuses larger ELF program header tables.
const MAX_PHDRS_BYTES: usize = 65536;
/// The kernel refuses a longer PT_INTERP.
const PATH_MAX: u64 = 4096;
const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

/// Whether a chain is broken or unsafe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramProblem {
    /// A file of the chain is missing or cannot run: a broken install.
    CannotRun,
    /// Someone other than root could change a file of the chain (or what it loads), or the
    /// chain cannot be checked.
    Unsafe,
}

/// Why a profile's program cannot be run safely. Displays as a message for the operator that
/// names the offending file, the chain that led to it and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProgramError {
    pub problem: ProgramProblem,
    /// The file or directory the problem is about.
    pub path: PathBuf,
    /// How the command leads to it, e.g.
    /// `/opt/x/bin/jupyterhub-singleuser → #! /opt/x/bin/python → /usr/bin/python3.11`.
    pub chain: String,
    pub message: String,
}

impl ProgramError {
    /// True for a broken install (something missing or not executable), false for a refusal.
    pub fn is_missing(&self) -> bool {
        self.problem == ProgramProblem::CannotRun
    }
}

/// Checks the program a profile runs: `command[0]`, every `#!` interpreter it leads to, what
/// `env` finds in `search_path` (the profile's `path`), and the ELF interpreter of every ELF
/// file on the way. See the module documentation for the rules.
pub fn check_program(command: &[String], search_path: &str) -> Result<(), ProgramError> {
    check_chain(command, Some(search_path))
}

/// [`check_program`]; without a search path (the profile's was invalid, and reported) what
/// `env` would run is not looked up.
pub(super) fn check_chain(
    command: &[String],
    search_path: Option<&str>,
) -> Result<(), ProgramError> {
    let mut checker = Checker {
        search_path,
        stack: Vec::new(),
    };
    let Some(program) = command.first() else {
        return Err(checker.fail(
            ProgramProblem::CannotRun,
            Path::new(""),
            "the command is empty; give at least the executable".to_owned(),
        ));
    };
    let rest = command[1..].iter().map(OsString::from).collect();
    checker
        .exec(
            Link::new(How::Command, PathBuf::from(program)),
            rest,
            Origin::Command,
            Depth::default(),
        )
        .map(drop)
}

/// How one file of the chain is reached.
#[derive(Debug, Clone)]
enum How {
    /// The profile's command.
    Command,
    /// Named by the `#!` line of the file before it, with its optional argument.
    Shebang { arg: Option<OsString> },
    /// Named by `env` with a full path.
    EnvPath,
    /// Found by `env` in the profile's path.
    Found { name: OsString },
    /// A place `env` looks in before the program it finds.
    Searched { name: OsString },
    /// The PT_INTERP of the ELF file before it.
    ElfInterpreter,
}

#[derive(Debug, Clone)]
struct Link {
    how: How,
    named: PathBuf,
    /// Where the name leads once every symbolic link is followed.
    resolved: Option<PathBuf>,
}

impl Link {
    fn new(how: How, named: PathBuf) -> Link {
        Link {
            how,
            named,
            resolved: None,
        }
    }

    fn shown(&self) -> &Path {
        self.resolved.as_deref().unwrap_or(&self.named)
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let named = self.named.display();
        match &self.how {
            How::Command => write!(f, "{named}")?,
            How::Shebang { arg: None } => write!(f, "#! {named}")?,
            How::Shebang { arg: Some(arg) } => write!(f, "#! {named} {}", arg.to_string_lossy())?,
            How::EnvPath => write!(f, "{named} (run by env)")?,
            How::Found { .. } => write!(f, "{named} (found by env in the path)")?,
            How::Searched { .. } => write!(f, "{named} (searched by env in the path)")?,
            How::ElfInterpreter => write!(f, "ELF interpreter {named}")?,
        }
        match &self.resolved {
            Some(resolved) if resolved != &self.named => write!(f, " → {}", resolved.display()),
            _ => Ok(()),
        }
    }
}

/// Where the arguments that follow a program's configured ones come from; `env` takes its
/// program from the first argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The rest of the profile's command, then the hub's arguments.
    Command,
    /// The `#!` argument, then the script's own path.
    Script,
}

#[derive(Debug, Clone, Copy, Default)]
struct Depth {
    /// `#!` interpreters followed since the last exec.
    interpreters: usize,
    /// Programs found through `env`.
    env_hops: usize,
}

#[derive(Debug)]
struct Checker<'p> {
    search_path: Option<&'p str>,
    /// The chain from the command to the file being checked.
    stack: Vec<Link>,
}

impl Checker<'_> {
    /// Checks the file `link` names and what it leads to. `args` are the arguments it will
    /// get that the configuration fixes (what follows comes from `origin`).
    fn exec(
        &mut self,
        link: Link,
        args: Vec<OsString>,
        origin: Origin,
        depth: Depth,
    ) -> Result<Walked, ProgramError> {
        let named = link.named.clone();
        self.stack.push(link);
        let result = match check_executable(&named) {
            Ok(walked) => self.exec_walked(walked, args, origin, depth),
            Err(e) => Err(self.path_error(e)),
        };
        self.stack.pop();
        result
    }

    /// [`Checker::exec`] for a file already walked (its link is on the stack).
    fn exec_walked(
        &mut self,
        walked: Walked,
        args: Vec<OsString>,
        origin: Origin,
        depth: Depth,
    ) -> Result<Walked, ProgramError> {
        if let Some(top) = self.stack.last_mut() {
            top.resolved = Some(walked.resolved.clone());
        }
        let (file, head) = self.read_head(&walked)?;
        match parse_shebang(&head) {
            Shebang::None => {
                if let Some(interpreter) = self.elf_interpreter(&walked.resolved, &file, &head)? {
                    self.loader(interpreter)?;
                }
            }
            Shebang::Invalid(why) => {
                return Err(self.fail(
                    ProgramProblem::CannotRun,
                    &walked.resolved,
                    format!(
                        "{} starts with #! but {why} (the kernel refuses it); fix its first line",
                        walked.resolved.display()
                    ),
                ));
            }
            Shebang::Interpreter { path, arg } => {
                self.interpreter(&walked.resolved, path, arg, depth)?;
            }
        }
        if is_env(self.stack.last(), &walked.resolved) {
            self.env(args, origin, depth)?;
        }
        Ok(walked)
    }

    /// The `#!` interpreter `path` of `script`.
    fn interpreter(
        &mut self,
        script: &Path,
        path: PathBuf,
        arg: Option<OsString>,
        depth: Depth,
    ) -> Result<(), ProgramError> {
        let link = Link::new(How::Shebang { arg: arg.clone() }, path.clone());
        if depth.interpreters >= MAX_INTERPRETERS {
            self.stack.push(link);
            let e = self.fail(
                ProgramProblem::CannotRun,
                &path,
                format!(
                    "more than {MAX_INTERPRETERS} nested #! interpreters (the kernel refuses \
                     deep chains); name the last interpreter in the #! line of {}",
                    script.display()
                ),
            );
            self.stack.pop();
            return Err(e);
        }
        if !path.is_absolute() {
            self.stack.push(link);
            let e = self.fail(
                ProgramProblem::Unsafe,
                &path,
                format!(
                    "the #! line of {} names {:?}, a relative path, which the kernel resolves \
                     against the server's working directory (the user's home); name the \
                     interpreter by its full path",
                    script.display(),
                    path.display().to_string()
                ),
            );
            self.stack.pop();
            return Err(e);
        }
        let depth = Depth {
            interpreters: depth.interpreters + 1,
            ..depth
        };
        self.exec(link, arg.into_iter().collect(), Origin::Script, depth)
            .map(drop)
    }

    /// The ELF interpreter (PT_INTERP) of the file on top of the stack.
    fn loader(&mut self, path: PathBuf) -> Result<(), ProgramError> {
        let named = path.clone();
        self.stack.push(Link::new(How::ElfInterpreter, path));
        let result = if named.is_absolute() {
            check_executable(&named)
                .map(drop)
                .map_err(|e| self.path_error(e))
        } else {
            Err(self.fail(
                ProgramProblem::Unsafe,
                &named,
                format!(
                    "the ELF interpreter {:?} is a relative path, which the kernel resolves \
                     against the server's working directory (the user's home); rebuild the \
                     program with an absolute interpreter",
                    named.display().to_string()
                ),
            ))
        };
        self.stack.pop();
        result
    }

    /// `env ARGS...`: the program it runs.
    fn env(
        &mut self,
        args: Vec<OsString>,
        origin: Origin,
        depth: Depth,
    ) -> Result<(), ProgramError> {
        let env = self
            .stack
            .last()
            .map_or_else(PathBuf::new, |l| l.named.clone());
        let Some(first) = args.first() else {
            return Err(match origin {
                Origin::Script => self.fail(
                    ProgramProblem::CannotRun,
                    &env,
                    "env has no program name after it, so it would be given the script itself \
                     and run it again, endlessly; name the interpreter directly (e.g. \
                     #!/usr/bin/python3)"
                        .to_owned(),
                ),
                Origin::Command => self.fail(
                    ProgramProblem::Unsafe,
                    &env,
                    "env has no program name after it in the command, so the hub's arguments \
                     would choose what runs; put the program in the command, by its full path"
                        .to_owned(),
                ),
            });
        };
        let shown = first.to_string_lossy();
        let bytes = first.as_bytes();
        if bytes.first() == Some(&b'-') || bytes.contains(&b'=') {
            let what = if bytes.first() == Some(&b'-') {
                "an option"
            } else {
                "a variable assignment"
            };
            return Err(self.fail(
                ProgramProblem::Unsafe,
                &env,
                format!(
                    "env is given {what} ({shown:?}), and spawnd does not follow what env would \
                     run then; name the interpreter directly (e.g. #!/usr/bin/python3, or the \
                     program by its full path in the command) and set variables in the \
                     profile's env"
                ),
            ));
        }
        if depth.env_hops >= MAX_ENV_HOPS {
            return Err(self.fail(
                ProgramProblem::CannotRun,
                &env,
                format!(
                    "env runs env more than {MAX_ENV_HOPS} times in a row (a loop?); name the \
                     interpreter directly"
                ),
            ));
        }
        let depth = Depth {
            interpreters: 0,
            env_hops: depth.env_hops + 1,
        };
        let rest: Vec<OsString> = args[1..].to_vec();
        let program = Path::new(first);
        if bytes.contains(&b'/') {
            if !program.is_absolute() {
                return Err(self.fail(
                    ProgramProblem::Unsafe,
                    program,
                    format!(
                        "env is given {shown:?}, a relative path, which it resolves against the \
                         server's working directory (the user's home); give the full path"
                    ),
                ));
            }
            return self
                .exec(
                    Link::new(How::EnvPath, program.to_path_buf()),
                    rest,
                    origin,
                    depth,
                )
                .map(drop);
        }
        self.search(first, rest, origin, depth)
    }

    /// `execvp`'s search for `name` in the profile's path.
    fn search(
        &mut self,
        name: &OsStr,
        args: Vec<OsString>,
        origin: Origin,
        depth: Depth,
    ) -> Result<(), ProgramError> {
        let Some(search_path) = self.search_path else {
            return Ok(());
        };
        let mut found = false;
        for dir in search_path.split(':') {
            let candidate = Path::new(dir).join(name);
            match check_executable(&candidate) {
                Ok(walked) => {
                    self.stack.push(Link::new(
                        How::Found {
                            name: name.to_owned(),
                        },
                        candidate,
                    ));
                    let result = self.exec_walked(walked, args.clone(), origin, depth);
                    self.stack.pop();
                    let walked = result?;
                    found = true;
                    if surely_runs(&walked) {
                        return Ok(());
                    }
                }
                // Nothing there; it must stay so: nobody but root may create it.
                Err(e) if e.problem == PathProblem::Absent => {
                    self.stack.push(Link::new(
                        How::Searched {
                            name: name.to_owned(),
                        },
                        candidate,
                    ));
                    let result = self.nobody_else_can_create(&e.path);
                    self.stack.pop();
                    result?;
                }
                // Something env would skip (a directory, no execute bit), in a place only root
                // can change.
                Err(e) if e.problem == PathProblem::Unusable => {}
                Err(e) => {
                    self.stack.push(Link::new(
                        How::Searched {
                            name: name.to_owned(),
                        },
                        candidate,
                    ));
                    let err = self.path_error(e);
                    self.stack.pop();
                    return Err(err);
                }
            }
        }
        if found {
            return Ok(());
        }
        let env = self
            .stack
            .last()
            .map_or_else(PathBuf::new, |l| l.named.clone());
        let blank = if name.as_bytes().iter().any(|b| *b == b' ' || *b == b'\t') {
            " (the kernel passes the whole rest of a #! line to env as one name)"
        } else {
            ""
        };
        Err(self.fail(
            ProgramProblem::CannotRun,
            &env,
            format!(
                "env finds no program {:?} in the profile's path {search_path:?}{blank}; \
                 install it, or name the interpreter by its full path",
                name.to_string_lossy()
            ),
        ))
    }

    /// `missing` does not exist (or a component of it is not a directory): the directory
    /// where it would be created must not be writable by group or others, sticky or not.
    fn nobody_else_can_create(&self, missing: &Path) -> Result<(), ProgramError> {
        let dir = missing.parent().unwrap_or(Path::new("/"));
        let meta = inspect(dir).map_err(|e| self.path_error(e))?;
        let mode = meta.mode();
        if meta.uid() == 0 && mode & 0o022 == 0 {
            return Ok(());
        }
        let (why, fix) = if meta.uid() == 0 {
            let why = format!(
                "is writable by group or others (mode {:04o})",
                mode & 0o7777
            );
            (why, "chmod go-w")
        } else {
            let why = format!("is owned by {}, not root", user_and_uid(meta.uid()));
            (why, "chown root")
        };
        Err(self.fail(
            ProgramProblem::Unsafe,
            dir,
            format!(
                "{} {why}, so others could create {} before env finds the real program; run \
                 {fix} {}, remove it from the profile's path, or name the interpreter by its \
                 full path",
                dir.display(),
                missing.display(),
                dir.display()
            ),
        ))
    }

    /// Opens the walked file (the very one walked: no link may have appeared since) and reads
    /// what the kernel reads to recognise it.
    fn read_head(&self, walked: &Walked) -> Result<(File, Vec<u8>), ProgramError> {
        let path = &walked.resolved;
        let cannot_read = |e: io::Error| {
            self.fail(
                ProgramProblem::Unsafe,
                path,
                format!(
                    "cannot read {} to check what it runs: {e}; make it readable by root \
                     (chmod u+r {})",
                    path.display(),
                    path.display()
                ),
            )
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(cannot_read)?;
        let meta = file.metadata().map_err(cannot_read)?;
        if (meta.dev(), meta.ino()) != (walked.meta.dev(), walked.meta.ino()) {
            return Err(self.fail(
                ProgramProblem::CannotRun,
                path,
                format!(
                    "{} changed while it was being checked; try again",
                    path.display()
                ),
            ));
        }
        let mut head = Vec::with_capacity(BINPRM_BUF_SIZE);
        (&file)
            .take(BINPRM_BUF_SIZE as u64)
            .read_to_end(&mut head)
            .map_err(cannot_read)?;
        Ok((file, head))
    }

    /// The PT_INTERP of `file` when it is an ELF executable.
    fn elf_interpreter(
        &self,
        path: &Path,
        file: &File,
        head: &[u8],
    ) -> Result<Option<PathBuf>, ProgramError> {
        elf_interpreter(file, head).map_err(|why| {
            self.fail(
                ProgramProblem::CannotRun,
                path,
                format!(
                    "{} is not a valid ELF executable ({why}); reinstall it",
                    path.display()
                ),
            )
        })
    }

    /// A walk error of the file on top of the stack, with the chain and what else to do.
    fn path_error(&self, e: PathError) -> ProgramError {
        let problem = match e.problem {
            PathProblem::Unsafe => ProgramProblem::Unsafe,
            PathProblem::Absent | PathProblem::Unusable => ProgramProblem::CannotRun,
        };
        let before = self.before_top().map(|l| l.shown().display().to_string());
        let hint = match (self.stack.last().map(|l| &l.how), problem, before) {
            (Some(How::Shebang { .. }), ProgramProblem::Unsafe, Some(script)) => format!(
                "; or name an interpreter that only root can change in the #! line of {script}"
            ),
            (Some(How::Shebang { .. }), ProgramProblem::CannotRun, Some(script)) => {
                format!("; install it, or fix the #! line of {script}")
            }
            (
                Some(How::Found { .. } | How::Searched { .. } | How::EnvPath),
                ProgramProblem::Unsafe,
                _,
            ) => "; or name the interpreter by its full path instead of through env".to_owned(),
            (Some(How::ElfInterpreter), ProgramProblem::CannotRun, Some(elf)) => {
                format!("; install it, or reinstall {elf}")
            }
            _ => String::new(),
        };
        self.fail(problem, &e.path, format!("{}{hint}", e.message))
    }

    fn before_top(&self) -> Option<&Link> {
        self.stack.len().checked_sub(2).map(|i| &self.stack[i])
    }

    /// An error about `path`, found while checking the file on top of the stack.
    fn fail(&self, problem: ProgramProblem, path: &Path, reason: String) -> ProgramError {
        let chain = self
            .stack
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" → ");
        let role = match (self.before_top(), self.stack.last()) {
            (Some(before), Some(top)) => {
                let before = before.shown().display();
                match &top.how {
                    How::Command => None,
                    How::Shebang { .. } => Some(format!("the #! interpreter of {before}")),
                    How::EnvPath => Some(format!("the program env runs for {before}")),
                    How::Found { name } => Some(format!(
                        "{}, which env runs for {before}",
                        name.to_string_lossy()
                    )),
                    How::Searched { name } => Some(format!(
                        "env's search of the profile's path for {}",
                        name.to_string_lossy()
                    )),
                    How::ElfInterpreter => Some(format!("the ELF interpreter of {before}")),
                }
            }
            _ => None,
        };
        let message = match role {
            Some(role) => format!("{role}: {reason} (chain: {chain})"),
            None if self.stack.len() > 1 => format!("{reason} (chain: {chain})"),
            None => reason,
        };
        ProgramError {
            problem,
            path: path.to_path_buf(),
            chain,
            message,
        }
    }
}

/// Whether the file `link` names is `env`: by the name it is run as (a multi-call binary such
/// as busybox looks at that) or by the file it resolves to.
fn is_env(link: Option<&Link>, resolved: &Path) -> bool {
    let env = Some(OsStr::new("env"));
    link.is_some_and(|l| l.named.file_name() == env) || resolved.file_name() == env
}

/// Whether every user may execute the file: then `execvp` stops there. Otherwise (some execute
/// bits missing, a `noexec` mount) it may go on to the next PATH directory for some users.
fn surely_runs(walked: &Walked) -> bool {
    let everyone = walked.meta.mode() & 0o111 == 0o111;
    let noexec = nix::sys::statvfs::statvfs(&walked.resolved).map_or(true, |s| {
        s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC)
    });
    everyone && !noexec
}

/// What the kernel's `binfmt_script` makes of a file's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Shebang {
    /// The file does not start with `#!`.
    None,
    /// `#!`, but no interpreter the kernel would run (it fails with ENOEXEC).
    Invalid(&'static str),
    /// The interpreter and its optional argument.
    Interpreter {
        path: PathBuf,
        arg: Option<OsString>,
    },
}

/// Parses a `#!` line exactly as `load_script` (fs/binfmt_script.c) does: the buffer is the
/// first [`BINPRM_BUF_SIZE`] bytes of the file, zero-padded.
pub(super) fn parse_shebang(head: &[u8]) -> Shebang {
    let mut buf = [0u8; BINPRM_BUF_SIZE];
    let n = head.len().min(BINPRM_BUF_SIZE);
    buf[..n].copy_from_slice(&head[..n]);
    if buf[0] != b'#' || buf[1] != b'!' {
        return Shebang::None;
    }
    let blank = |c: u8| c == b' ' || c == b'\t';
    let last = BINPRM_BUF_SIZE - 1;
    // First index in first..=last that is not a blank / that is a blank or NUL.
    let non_blank = |first: usize, last: usize| (first..=last).find(|&i| !blank(buf[i]));
    let terminator =
        |first: usize, last: usize| (first..=last).find(|&i| blank(buf[i]) || buf[i] == 0);

    let mut end = match buf.iter().position(|&c| c == b'\n') {
        Some(newline) => newline,
        None => {
            let Some(start) = non_blank(2, last) else {
                return Shebang::Invalid("its first 256 bytes are blank");
            };
            // Without a newline, only a blank or NUL after the name shows it is complete.
            if terminator(start, last).is_none() {
                return Shebang::Invalid("the interpreter's name is cut off at 256 bytes");
            }
            last
        }
    };
    // buf[1] is '!': this stops there at the latest.
    while blank(buf[end - 1]) {
        end -= 1;
    }
    let name = match non_blank(2, end) {
        Some(name) if name != end => name,
        _ => return Shebang::Invalid("it names no interpreter"),
    };
    let separator = terminator(name, end);
    let arg = match separator {
        Some(sep) if buf[sep] != 0 => non_blank(sep, end),
        _ => None,
    };
    let name_end = separator.unwrap_or(end);
    if name_end == name {
        return Shebang::Invalid("it names no interpreter");
    }
    let path = PathBuf::from(OsString::from_vec(buf[name..name_end].to_vec()));
    // The argument is a C string: it ends at the first NUL, or where the line ends.
    let arg = arg.map(|start| {
        let stop = (start..end).find(|&i| buf[i] == 0).unwrap_or(end);
        OsString::from_vec(buf[start..stop].to_vec())
    });
    Shebang::Interpreter { path, arg }
}

/// The PT_INTERP of an ELF executable, as `load_elf_binary` reads it: `Ok(None)` when `head`
/// is not an ELF file or the file has no interpreter (static), `Err(why)` when the kernel would
/// refuse it (ENOEXEC).
pub(super) fn elf_interpreter(file: &File, head: &[u8]) -> Result<Option<PathBuf>, String> {
    if head.len() < 4 || head[..4] != *b"\x7fELF" {
        return Ok(None);
    }
    let wide = match head.get(4) {
        Some(1) => false,
        Some(2) => true,
        other => return Err(format!("unknown ELF class {other:?}")),
    };
    let big = match head.get(5) {
        Some(1) => false,
        Some(2) => true,
        other => return Err(format!("unknown ELF byte order {other:?}")),
    };
    let header_size = if wide { 64 } else { 52 };
    if head.len() < header_size {
        return Err("truncated ELF header".to_owned());
    }
    let read = Fields { big };
    let e_type = read.u16(head, 16);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(format!("ELF type {e_type} is not an executable"));
    }
    let (phoff, phentsize, phnum) = if wide {
        (
            read.u64(head, 0x20),
            read.u16(head, 0x36),
            read.u16(head, 0x38),
        )
    } else {
        (
            u64::from(read.u32(head, 0x1c)),
            read.u16(head, 0x2a),
            read.u16(head, 0x2c),
        )
    };
    let entry_size = if wide { 56 } else { 32 };
    if usize::from(phentsize) != entry_size {
        return Err(format!("program header entries of {phentsize} bytes"));
    }
    let table_size = usize::from(phnum) * entry_size;
    if phnum == 0 || table_size > MAX_PHDRS_BYTES {
        return Err(format!("{phnum} program headers"));
    }
    let mut table = vec![0u8; table_size];
    file.read_exact_at(&mut table, phoff)
        .map_err(|e| format!("cannot read its program headers: {e}"))?;
    for entry in table.chunks_exact(entry_size) {
        if read.u32(entry, 0) != PT_INTERP {
            continue;
        }
        let (offset, size) = if wide {
            (read.u64(entry, 8), read.u64(entry, 32))
        } else {
            (
                u64::from(read.u32(entry, 4)),
                u64::from(read.u32(entry, 16)),
            )
        };
        if !(2..=PATH_MAX).contains(&size) {
            return Err(format!("an interpreter name of {size} bytes"));
        }
        // At most PATH_MAX: fits.
        let mut name = vec![0u8; usize::try_from(size).unwrap_or(0)];
        file.read_exact_at(&mut name, offset)
            .map_err(|e| format!("cannot read its interpreter's name: {e}"))?;
        if name.last() != Some(&0) {
            return Err("its interpreter's name does not end in NUL".to_owned());
        }
        let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        name.truncate(len);
        return Ok(Some(PathBuf::from(OsString::from_vec(name))));
    }
    Ok(None)
}

/// Reads fixed-size fields in the byte order of an ELF file. Offsets are within the slices
/// (checked by the callers' sizes).
#[derive(Debug, Clone, Copy)]
struct Fields {
    big: bool,
}

impl Fields {
    fn bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = b.get(at..at + N) {
            out.copy_from_slice(src);
        }
        out
    }

    fn u16(self, b: &[u8], at: usize) -> u16 {
        let v = Self::bytes::<2>(b, at);
        if self.big {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    }

    fn u32(self, b: &[u8], at: usize) -> u32 {
        let v = Self::bytes::<4>(b, at);
        if self.big {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    }

    fn u64(self, b: &[u8], at: usize) -> u64 {
        let v = Self::bytes::<8>(b, at);
        if self.big {
            u64::from_be_bytes(v)
        } else {
            u64::from_le_bytes(v)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
