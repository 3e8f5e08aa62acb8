//! The walker is a security boundary: each rule it enforces has a test here that fails when
//! the rule is dropped or loosened. Most need root (the files must be root's, and some are
//! given to `nobody`); the system's own files serve for the rest.

use super::*;
use crate::config::testing::{TempDir, make_dir, make_file, require_root, set_mode};

use std::fmt::Debug;
use std::os::unix::fs::{chown, lchown, symlink};

/// The uid of `nobody` on Debian.
const NOBODY: u32 = 65534;

/// `result` is an error of `problem` about `path`; its message.
#[track_caller]
fn refused<T: Debug>(result: Result<T, PathError>, problem: PathProblem, path: &Path) -> String {
    let e = result.expect_err("the path must be refused");
    assert_eq!(e.problem, problem, "{e}");
    assert_eq!(e.path, path, "{e}");
    assert_eq!(e.to_string(), e.message);
    e.message
}

/// The message for a directory or file writable by group or others.
fn writable_message(path: &Path, mode: u32) -> String {
    format!(
        "{} is writable by group or others (mode {mode:04o}); run chmod go-w {}",
        path.display(),
        path.display()
    )
}

/// `check_executable` that passed: where it led.
#[track_caller]
fn resolved(path: &Path) -> PathBuf {
    check_executable(path).unwrap().resolved
}

// ---------------------------------------------------------------------------------------------
// The system's own files: no root needed

#[test]
fn system_files_pass_and_fail_by_kind() {
    // /bin is a symlink to usr/bin on Debian; /bin/sh links to dash.
    check_executable(Path::new("/bin/sh")).unwrap();
    check_executable(Path::new("/usr/bin/env")).unwrap();
    assert_eq!(
        resolved(Path::new("/usr/./bin/../bin/true")),
        fs::canonicalize("/usr/bin/true").unwrap()
    );
    check_private_dir(Path::new("/")).unwrap();
    check_private_dir(Path::new("/usr/lib")).unwrap();
    check_config_file(Path::new("/etc/passwd")).unwrap();

    let e = refused(
        check_executable(Path::new("bin/sh")),
        PathProblem::Unsafe,
        Path::new("bin/sh"),
    );
    assert_eq!(e, "bin/sh is not an absolute path; give its full path");
    refused(
        check_private_dir(Path::new("var/lib")),
        PathProblem::Unsafe,
        Path::new("var/lib"),
    );

    let e = refused(
        check_executable(Path::new("/nonexistent-spawnd/x")),
        PathProblem::Absent,
        Path::new("/nonexistent-spawnd"),
    );
    assert_eq!(e, "/nonexistent-spawnd does not exist");
    let e = refused(
        check_executable(Path::new("/etc/passwd/x")),
        PathProblem::Absent,
        Path::new("/etc/passwd"),
    );
    assert_eq!(e, "/etc/passwd is not a directory; fix the path");

    let e = refused(
        check_executable(Path::new("/usr/bin")),
        PathProblem::Unusable,
        Path::new("/usr/bin"),
    );
    assert!(e.contains("/usr/bin is not a regular file"), "{e}");
    refused(
        check_executable(Path::new("/")),
        PathProblem::Unusable,
        Path::new("/"),
    );
    let e = refused(
        check_executable(Path::new("/etc/passwd")),
        PathProblem::Unusable,
        Path::new("/etc/passwd"),
    );
    assert_eq!(
        e,
        "/etc/passwd is not executable (mode 0644); run chmod 755 /etc/passwd"
    );
    let e = refused(
        check_private_dir(Path::new("/etc/passwd")),
        PathProblem::Unusable,
        Path::new("/etc/passwd"),
    );
    assert_eq!(
        e,
        "/etc/passwd is not a directory; remove it or choose another path"
    );
    let e = refused(
        check_config_file(Path::new("/etc")),
        PathProblem::Unusable,
        Path::new("/etc"),
    );
    assert_eq!(e, "/etc is not a regular file");
}

/// A relative configuration path is taken from the current directory, not refused; an empty
/// one cannot be.
#[test]
fn config_file_paths_are_made_absolute() {
    let relative = Path::new("no-such-spawnd-config.toml");
    let e = check_config_file(relative).unwrap_err();
    let absolute = std::env::current_dir().unwrap().join(relative);
    assert!(absolute.starts_with(&e.path), "{e}");
    assert!(!e.message.contains("not an absolute path"), "{e}");

    let e = refused(
        check_config_file(Path::new("")),
        PathProblem::Unusable,
        Path::new(""),
    );
    assert!(e.starts_with("cannot resolve : "), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Directories on the way

/// The group bit and the other bit each make a directory on the way unsafe, for every kind of
/// file at the end.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn ancestors_writable_by_group_or_others_are_refused() {
    require_root();
    let dir = TempDir::new("writable-ancestor");
    let base = dir.path();
    for mode in [0o775, 0o757, 0o777] {
        let open = base.join(format!("open{mode:o}"));
        make_dir(&open, mode);
        make_dir(&open.join("bin"), 0o755);
        let program = open.join("bin/server");
        make_file(&program, 0o755);
        let config = open.join("bin/spawnd.toml");
        make_file(&config, 0o644);
        let private = open.join("state");
        make_dir(&private, 0o700);

        let expected = writable_message(&open, mode);
        let e = refused(check_executable(&program), PathProblem::Unsafe, &open);
        assert_eq!(e, expected);
        let e = refused(check_config_file(&config), PathProblem::Unsafe, &open);
        assert_eq!(e, expected);
        let e = refused(check_private_dir(&private), PathProblem::Unsafe, &open);
        assert_eq!(e, expected);

        set_mode(&open, 0o755);
        check_executable(&program).unwrap();
        check_config_file(&config).unwrap();
        check_private_dir(&private).unwrap();
    }
}

/// A sticky directory on the way is accepted only when root owns it: the sticky bit protects
/// root's entries from others, not from the directory's owner.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn sticky_ancestors_must_be_roots() {
    require_root();
    let dir = TempDir::new("sticky-ancestor");
    let sticky = dir.path().join("sticky");
    make_dir(&sticky, 0o1777);
    make_dir(&sticky.join("bin"), 0o755);
    let program = sticky.join("bin/server");
    make_file(&program, 0o755);
    let private = sticky.join("state");
    make_dir(&private, 0o700);
    check_executable(&program).unwrap();
    check_private_dir(&private).unwrap();

    chown(&sticky, Some(NOBODY), None).unwrap();
    let e = refused(check_executable(&program), PathProblem::Unsafe, &sticky);
    assert_eq!(
        e,
        format!(
            "{} is owned by nobody (uid {NOBODY}), not root; run chown root {}",
            sticky.display(),
            sticky.display()
        )
    );
    refused(check_private_dir(&private), PathProblem::Unsafe, &sticky);
}

/// Rule 6 of the security review: the directory that directly holds a program gets no sticky
/// exception (others could put files beside it that the program loads).
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn the_directory_holding_a_program_gets_no_sticky_exception() {
    require_root();
    let dir = TempDir::new("sticky-exe");
    let base = dir.path();
    for mode in [0o1777, 0o1775, 0o1757] {
        let sticky = base.join(format!("sticky{mode:o}"));
        make_dir(&sticky, mode);
        let direct = sticky.join("server");
        make_file(&direct, 0o755);
        let e = refused(check_executable(&direct), PathProblem::Unsafe, &sticky);
        assert!(
            e.starts_with(&format!(
                "{} holds {} and is writable by group or others (mode {mode:04o})",
                sticky.display(),
                direct.display()
            )) && e.contains(&format!("run chmod go-w {}", sticky.display())),
            "{e}"
        );
    }
    // Below a sticky directory, in root's own directories: fine.
    let sticky = base.join("sticky1777");
    make_dir(&sticky.join("a"), 0o755);
    make_dir(&sticky.join("a/b"), 0o755);
    let one_below = sticky.join("a/server");
    make_file(&one_below, 0o755);
    check_executable(&one_below).unwrap();
    let two_below = sticky.join("a/b/server");
    make_file(&two_below, 0o755);
    check_executable(&two_below).unwrap();
    // A link placed in the sticky directory: the directory of the name counts too.
    let link = sticky.join("link");
    symlink(&two_below, &link).unwrap();
    refused(check_executable(&link), PathProblem::Unsafe, &sticky);
    // A link elsewhere to a file directly in it: the file's own directory counts.
    let bin = base.join("bin");
    make_dir(&bin, 0o755);
    let to_direct = bin.join("server");
    symlink(sticky.join("server"), &to_direct).unwrap();
    refused(check_executable(&to_direct), PathProblem::Unsafe, &sticky);
    // The exception stands for the directories the daemon writes and the configuration file.
    let state = sticky.join("state");
    make_dir(&state, 0o700);
    check_private_dir(&state).unwrap();
    let config = sticky.join("spawnd.toml");
    make_file(&config, 0o644);
    check_config_file(&config).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The file at the end

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn executables_must_be_roots_alone_and_executable() {
    require_root();
    let dir = TempDir::new("exe");
    let bin = dir.path().join("bin");
    make_dir(&bin, 0o755);

    let good = bin.join("server");
    make_file(&good, 0o755);
    assert_eq!(resolved(&good), good);
    let owner_only = bin.join("owner-only");
    make_file(&owner_only, 0o700);
    check_executable(&owner_only).unwrap();

    for mode in [0o775, 0o757, 0o777] {
        let writable = bin.join(format!("writable{mode:o}"));
        make_file(&writable, mode);
        let e = refused(check_executable(&writable), PathProblem::Unsafe, &writable);
        assert_eq!(e, writable_message(&writable, mode));
    }

    let plain = bin.join("plain");
    make_file(&plain, 0o644);
    let e = refused(check_executable(&plain), PathProblem::Unusable, &plain);
    assert_eq!(
        e,
        format!(
            "{} is not executable (mode 0644); run chmod 755 {}",
            plain.display(),
            plain.display()
        )
    );

    let a_dir = bin.join("a-dir");
    make_dir(&a_dir, 0o755);
    let e = refused(check_executable(&a_dir), PathProblem::Unusable, &a_dir);
    assert!(e.contains("is not a regular file"), "{e}");
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn config_file_must_be_roots_alone() {
    require_root();
    let dir = TempDir::new("cfgfile");
    let base = dir.path();
    let config = base.join("spawnd.toml");
    make_file(&config, 0o644);
    check_config_file(&config).unwrap();

    // Writable by group or others: anyone could make themselves an admin.
    for mode in [0o664, 0o646, 0o666] {
        set_mode(&config, mode);
        let e = refused(check_config_file(&config), PathProblem::Unsafe, &config);
        assert_eq!(e, writable_message(&config, mode));
    }

    // Owned by someone else.
    set_mode(&config, 0o644);
    chown(&config, Some(NOBODY), None).unwrap();
    let e = refused(check_config_file(&config), PathProblem::Unsafe, &config);
    assert!(e.contains("not root; run chown root"), "{e}");

    // In a directory others can write to (the file could be replaced).
    let open = base.join("open");
    make_dir(&open, 0o777);
    let inside = open.join("spawnd.toml");
    make_file(&inside, 0o644);
    let e = refused(check_config_file(&inside), PathProblem::Unsafe, &open);
    assert!(e.contains("(mode 0777)"), "{e}");

    // Missing: absent, about the missing file.
    let missing = base.join("missing.toml");
    refused(check_config_file(&missing), PathProblem::Absent, &missing);
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn private_dirs() {
    require_root();
    let dir = TempDir::new("private");
    let base = dir.path();

    // 0700 root dir inside a 0755 dir under the sticky /tmp: fine.
    let state = base.join("state");
    make_dir(&state, 0o700);
    check_private_dir(&state).unwrap();
    check_private_dir(base).unwrap();

    // Writable by group or others, and a sticky 1777 one as the target: refused.
    for mode in [0o770, 0o707, 0o777] {
        let open = base.join(format!("open{mode:o}"));
        make_dir(&open, mode);
        let e = refused(check_private_dir(&open), PathProblem::Unsafe, &open);
        assert_eq!(e, writable_message(&open, mode));
    }
    let sticky = base.join("sticky");
    make_dir(&sticky, 0o1777);
    let e = refused(check_private_dir(&sticky), PathProblem::Unsafe, &sticky);
    assert!(e.contains("(mode 1777)"), "{e}");
    // ... but a sticky root-owned ancestor is fine.
    let under_sticky = sticky.join("d");
    make_dir(&under_sticky, 0o755);
    check_private_dir(&under_sticky).unwrap();
    // A non-sticky world-writable ancestor is not.
    let open = base.join("open777");
    let under_open = open.join("d");
    make_dir(&under_open, 0o700);
    let e = refused(check_private_dir(&under_open), PathProblem::Unsafe, &open);
    assert!(
        e.starts_with(&format!("{} is writable", open.display())),
        "{e}"
    );
    // A path that ends in ".." ends on a directory checked as the target, not as an ancestor.
    check_private_dir(&state.join("..")).unwrap();
    refused(
        check_private_dir(&under_open.join("..")),
        PathProblem::Unsafe,
        &open,
    );
    refused(
        check_private_dir(&sticky.join("d/..")),
        PathProblem::Unsafe,
        &sticky,
    );

    // A file, a missing path.
    let file = base.join("file");
    make_file(&file, 0o600);
    let e = refused(check_private_dir(&file), PathProblem::Unusable, &file);
    assert!(e.contains("is not a directory"), "{e}");
    let missing = base.join("missing");
    let e = refused(check_private_dir(&missing), PathProblem::Absent, &missing);
    assert!(e.ends_with("missing does not exist"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Owners

/// Everything on the way must be root's: the file, a directory above, and the target
/// directory; the message names the owner, or the bare uid when no account has it.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn owners_other_than_root_are_refused() {
    require_root();
    let dir = TempDir::new("owners");
    let base = dir.path();
    let bin = base.join("bin");
    make_dir(&bin, 0o755);

    let theirs = bin.join("theirs");
    make_file(&theirs, 0o755);
    chown(&theirs, Some(NOBODY), None).unwrap();
    let e = refused(check_executable(&theirs), PathProblem::Unsafe, &theirs);
    assert_eq!(
        e,
        format!(
            "{} is owned by nobody (uid {NOBODY}), not root; run chown root {}",
            theirs.display(),
            theirs.display()
        )
    );

    let their_dir = base.join("theirdir");
    make_dir(&their_dir, 0o755);
    let in_their_dir = their_dir.join("server");
    make_file(&in_their_dir, 0o755);
    chown(&their_dir, Some(NOBODY), None).unwrap();
    let e = refused(
        check_executable(&in_their_dir),
        PathProblem::Unsafe,
        &their_dir,
    );
    assert!(
        e.starts_with(&format!("{} is owned by nobody", their_dir.display())),
        "{e}"
    );
    let private = their_dir.join("state");
    make_dir(&private, 0o700);
    refused(check_private_dir(&private), PathProblem::Unsafe, &their_dir);

    // The target directory itself, owned by a uid no account has.
    let unknown = 54321;
    assert!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(unknown))
            .unwrap()
            .is_none(),
        "uid {unknown} must have no passwd entry for this test"
    );
    let state = base.join("state");
    make_dir(&state, 0o700);
    chown(&state, Some(unknown), None).unwrap();
    let e = refused(check_private_dir(&state), PathProblem::Unsafe, &state);
    assert_eq!(
        e,
        format!(
            "{} is owned by uid {unknown}, not root; run chown root {}",
            state.display(),
            state.display()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Symbolic links

/// Links are followed one hop at a time, and every directory crossed counts: the target's,
/// the link's own, an intermediate link's, a directory link's.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn every_directory_a_link_crosses_is_checked() {
    require_root();
    let dir = TempDir::new("links");
    let base = dir.path();
    let bin = base.join("bin");
    make_dir(&bin, 0o755);
    let good = bin.join("server");
    make_file(&good, 0o755);
    let writable = base.join("gw");
    make_dir(&writable, 0o775);
    let under_writable = writable.join("server");
    make_file(&under_writable, 0o755);

    // A relative link through a good chain is fine; so is a chain of links; both end on the
    // real file.
    let rel = bin.join("rel");
    symlink("server", &rel).unwrap();
    assert_eq!(resolved(&rel), good);
    let chain = base.join("chain");
    symlink("bin/rel", &chain).unwrap();
    assert_eq!(resolved(&chain), good);

    // A link in a good directory pointing into a bad one: the target's directories count.
    let link_to_bad = bin.join("link-to-bad");
    symlink(&under_writable, &link_to_bad).unwrap();
    refused(
        check_executable(&link_to_bad),
        PathProblem::Unsafe,
        &writable,
    );
    // The same through a relative target that climbs with "..".
    let climbing = bin.join("climbing");
    symlink("../gw/server", &climbing).unwrap();
    refused(check_executable(&climbing), PathProblem::Unsafe, &writable);

    // A link in a bad directory pointing at a good file: the link's own parents count.
    let link_in_bad = writable.join("link-to-good");
    symlink(&good, &link_in_bad).unwrap();
    refused(
        check_executable(&link_in_bad),
        PathProblem::Unsafe,
        &writable,
    );

    // An intermediate link that lives in a bad directory is caught too.
    let hop = writable.join("hop");
    symlink(&good, &hop).unwrap();
    let via_hop = bin.join("via-hop");
    symlink(&hop, &via_hop).unwrap();
    let e = refused(check_executable(&via_hop), PathProblem::Unsafe, &writable);
    assert!(
        e.starts_with(&format!("{} is writable", writable.display())),
        "{e}"
    );

    // A link to a directory in the middle of the path: the real directory is checked.
    let dir_link = base.join("dir-link");
    symlink(&writable, &dir_link).unwrap();
    refused(
        check_executable(&dir_link.join("server")),
        PathProblem::Unsafe,
        &writable,
    );
    let good_dir_link = base.join("good-dir-link");
    symlink("bin", &good_dir_link).unwrap();
    assert_eq!(resolved(&good_dir_link.join("server")), good);
}

/// `..` after a link to a directory goes up from where the link led, as the kernel does, not
/// from the link's name.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn dot_dot_goes_up_from_where_a_link_led() {
    require_root();
    let dir = TempDir::new("dotdot");
    let base = dir.path();
    make_dir(&base.join("bin"), 0o755);
    make_dir(&base.join("deep"), 0o755);
    make_dir(&base.join("deep/a"), 0o755);
    let real = base.join("deep/server");
    make_file(&real, 0o755);
    let link = base.join("bin/to-a");
    symlink(base.join("deep/a"), &link).unwrap();
    // By the text, bin/to-a/../server would be bin/server, which does not exist.
    let through = link.join("../server");
    assert_eq!(resolved(&through), real);
    assert_eq!(fs::canonicalize(&through).unwrap(), real);

    // And when the real parent is unsafe, that is what is refused.
    let writable = base.join("gw");
    make_dir(&writable, 0o775);
    make_dir(&writable.join("a"), 0o755);
    make_file(&writable.join("server"), 0o755);
    let to_writable = base.join("bin/to-gw-a");
    symlink(writable.join("a"), &to_writable).unwrap();
    refused(
        check_executable(&to_writable.join("../server")),
        PathProblem::Unsafe,
        &writable,
    );
}

/// A link someone else owns could be pointed anywhere by them: refused, with `chown -h`.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn links_must_be_roots() {
    require_root();
    let dir = TempDir::new("their-link");
    let base = dir.path();
    let good = base.join("server");
    make_file(&good, 0o755);
    let their_link = base.join("their-link");
    symlink(&good, &their_link).unwrap();
    lchown(&their_link, Some(NOBODY), None).unwrap();
    let e = refused(
        check_executable(&their_link),
        PathProblem::Unsafe,
        &their_link,
    );
    assert_eq!(
        e,
        format!(
            "{} is owned by nobody (uid {NOBODY}), not root; run chown -h root {}",
            their_link.display(),
            their_link.display()
        )
    );

    let state = base.join("state");
    make_dir(&state, 0o700);
    let their_dir_link = base.join("their-dir-link");
    symlink(&state, &their_dir_link).unwrap();
    lchown(&their_dir_link, Some(NOBODY), None).unwrap();
    refused(
        check_private_dir(&their_dir_link),
        PathProblem::Unsafe,
        &their_dir_link,
    );
    // The same link made root's again passes: the owner was the only fault.
    lchown(&their_dir_link, Some(0), None).unwrap();
    check_private_dir(&their_dir_link).unwrap();
}

/// Loops end as the kernel ends them: after 40 links in one walk.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn link_loops_and_the_hop_limit() {
    require_root();
    let dir = TempDir::new("loops");
    let base = dir.path();
    let too_many = |path: &Path| {
        let e = refused(check_executable(path), PathProblem::Unusable, path);
        assert_eq!(
            e,
            format!(
                "{} has too many levels of symbolic links; point it at the real file",
                path.display()
            )
        );
    };

    let loop_a = base.join("loop-a");
    let loop_b = base.join("loop-b");
    symlink(&loop_b, &loop_a).unwrap();
    symlink(&loop_a, &loop_b).unwrap();
    too_many(&loop_a);
    let itself = base.join("itself");
    symlink("itself", &itself).unwrap();
    too_many(&itself);
    refused(check_private_dir(&itself), PathProblem::Unusable, &itself);

    // A chain of exactly 40 links (the kernel's limit, written out here so that a change of
    // the constant fails) passes; one more does not.
    let target = base.join("server");
    make_file(&target, 0o755);
    let mut previous = target.clone();
    for hop in 1..=41 {
        let link = base.join(format!("hop{hop}"));
        symlink(&previous, &link).unwrap();
        previous = link;
    }
    assert_eq!(resolved(&base.join("hop40")), target);
    too_many(&base.join("hop41"));
}

// ---------------------------------------------------------------------------------------------
// Missing files

/// Nothing there is absent (a broken install), about the first component missing.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn missing_files_are_absent() {
    require_root();
    let dir = TempDir::new("missing");
    let base = dir.path();
    let missing = base.join("missing");
    let e = refused(
        check_executable(&missing.join("bin/server")),
        PathProblem::Absent,
        &missing,
    );
    assert_eq!(e, format!("{} does not exist", missing.display()));

    // A file where a directory should be.
    let file = base.join("file");
    make_file(&file, 0o755);
    let e = refused(
        check_executable(&file.join("server")),
        PathProblem::Absent,
        &file,
    );
    assert_eq!(
        e,
        format!("{} is not a directory; fix the path", file.display())
    );

    // A dangling link: about where it leads.
    let dangling = base.join("dangling");
    let nowhere = base.join("nowhere");
    symlink(&nowhere, &dangling).unwrap();
    refused(check_executable(&dangling), PathProblem::Absent, &nowhere);
    refused(check_config_file(&dangling), PathProblem::Absent, &nowhere);
}
