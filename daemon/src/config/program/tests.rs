use super::*;
use crate::config::testing::{TempDir, make_dir, make_file, require_root, set_mode};
use std::os::unix::fs::symlink;
use std::process::Command;

fn shebang(path: &str, arg: Option<&str>) -> Shebang {
    Shebang::Interpreter {
        path: PathBuf::from(path),
        arg: arg.map(OsString::from),
    }
}

fn write_script(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    set_mode(path, mode);
}

fn command(argv: &[&Path]) -> Vec<String> {
    argv.iter().map(|p| p.display().to_string()).collect()
}

/// `check_program` of one executable with the default path.
fn check(program: &Path) -> Result<(), ProgramError> {
    check_program(&command(&[program]), crate::config::DEFAULT_SERVER_PATH)
}

#[track_caller]
fn refused(result: Result<(), ProgramError>, problem: ProgramProblem, words: &[&str]) {
    let e = result.expect_err("the chain must be refused");
    assert_eq!(e.problem, problem, "{e}");
    for w in words {
        assert!(e.message.contains(w), "{w:?} is not in: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The #! line, as the kernel reads it

#[test]
fn shebang_lines_are_parsed_like_binfmt_script() {
    let cases: &[(&[u8], Shebang)] = &[
        (b"#!/bin/sh\necho hi\n", shebang("/bin/sh", None)),
        (
            b"#! \t/usr/bin/python3 -u\n",
            shebang("/usr/bin/python3", Some("-u")),
        ),
        // The rest of the line is ONE argument, trailing blanks trimmed.
        (
            b"#!/usr/bin/env python3 -u \t \n",
            shebang("/usr/bin/env", Some("python3 -u")),
        ),
        // A DOS line end stays part of the last word.
        (b"#!/bin/sh\r\n", shebang("/bin/sh\r", None)),
        (b"#!/bin/sh\ta\r\n", shebang("/bin/sh", Some("a\r"))),
        // A short file without a newline: the zero padding ends the line; a blank after the
        // name leaves an empty argument (the kernel passes "").
        (b"#!/bin/sh", shebang("/bin/sh", None)),
        (b"#!/bin/sh ", shebang("/bin/sh", Some(""))),
        // NUL ends a C string.
        (b"#!/bin/s\0h x\n", shebang("/bin/s", None)),
        (b"#!/bin/sh a\0b\n", shebang("/bin/sh", Some("a"))),
        (b"#!sh\n", shebang("sh", None)),
        (b"#!\n", Shebang::Invalid("it names no interpreter")),
        (b"#!  \t \n", Shebang::Invalid("it names no interpreter")),
        (b"#!", Shebang::Invalid("it names no interpreter")),
        (b"", Shebang::None),
        (b"#", Shebang::None),
        (b" #!/bin/sh\n", Shebang::None),
        (b"\x7fELF", Shebang::None),
    ];
    for (text, expected) in cases {
        assert_eq!(
            &parse_shebang(text),
            expected,
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }

    // Only the first 256 bytes count: a long argument is cut at byte 255 ...
    let mut long = b"#!/bin/sh ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 300));
    long.push(b'\n');
    assert_eq!(
        parse_shebang(&long),
        shebang("/bin/sh", Some(&"x".repeat(BINPRM_BUF_SIZE - 1 - 10)))
    );
    // ... but a name that does not end within them is refused, not cut.
    let mut cut = b"#!/".to_vec();
    cut.extend(std::iter::repeat_n(b'a', 300));
    assert_eq!(
        parse_shebang(&cut),
        Shebang::Invalid("the interpreter's name is cut off at 256 bytes")
    );
    let mut blank = b"#!".to_vec();
    blank.extend(std::iter::repeat_n(b' ', 300));
    assert_eq!(
        parse_shebang(&blank),
        Shebang::Invalid("its first 256 bytes are blank")
    );
}

/// The parser against the running kernel: each script's interpreter prints the arguments the
/// kernel gave it, which must be the parsed argument (if any) and the script's path.
#[test]
fn shebang_parser_agrees_with_the_kernel() {
    let dir = TempDir::new("kernel");
    let show = dir.path().join("show");
    write_script(
        &show,
        "#!/bin/sh\nfor a in \"$@\"; do printf '[%s]' \"$a\"; done\n",
        0o755,
    );
    let show = show.display().to_string();
    let tails: &[&[u8]] = &[
        b"\nexit 0\n",
        b" \t\n",
        b" a b  \t\n",
        b"\tone\r\n",
        b" ",
        b"",
        b"   spaced   out   \n",
    ];
    let mut texts: Vec<Vec<u8>> = tails
        .iter()
        .map(|tail| [format!("#!{show}").as_bytes(), tail].concat())
        .collect();
    let mut long = format!("#! {show} ").into_bytes();
    long.extend(std::iter::repeat_n(b'y', 400));
    texts.push(long);
    for (i, text) in texts.iter().enumerate() {
        let script = dir.path().join(format!("s{i}"));
        fs::write(&script, text).unwrap();
        set_mode(&script, 0o755);
        let out = run_when_not_busy(&script);
        assert!(out.status.success(), "{script:?}: {out:?}");
        let Shebang::Interpreter { path, arg } = parse_shebang(text) else {
            panic!("{text:?} must parse");
        };
        assert_eq!(path, Path::new(&show));
        let mut expected = String::new();
        if let Some(arg) = arg {
            expected.push_str(&format!("[{}]", arg.to_string_lossy()));
        }
        expected.push_str(&format!("[{}]", script.display()));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The ELF interpreter

/// A minimal ELF file: header, one PT_LOAD and (optionally) one PT_INTERP program header.
fn fake_elf(wide: bool, big: bool, e_type: u16, interp: Option<&[u8]>) -> Vec<u8> {
    let (header, entry) = if wide { (64, 56) } else { (52, 32) };
    let phnum: u16 = if interp.is_some() { 2 } else { 1 };
    let interp_at = header + entry * usize::from(phnum);
    let mut f = vec![0u8; interp_at];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = if wide { 2 } else { 1 };
    f[5] = if big { 2 } else { 1 };
    f[6] = 1;
    let put = |f: &mut Vec<u8>, at: usize, v: u64, n: usize| {
        let bytes = if big {
            v.to_be_bytes()[8 - n..].to_vec()
        } else {
            v.to_le_bytes()[..n].to_vec()
        };
        f[at..at + n].copy_from_slice(&bytes);
    };
    put(&mut f, 16, u64::from(e_type), 2);
    if wide {
        put(&mut f, 0x20, header as u64, 8);
        put(&mut f, 0x36, entry as u64, 2);
        put(&mut f, 0x38, u64::from(phnum), 2);
    } else {
        put(&mut f, 0x1c, header as u64, 4);
        put(&mut f, 0x2a, entry as u64, 2);
        put(&mut f, 0x2c, u64::from(phnum), 2);
    }
    put(&mut f, header, 1, 4); // PT_LOAD
    if let Some(name) = interp {
        let ph = header + entry;
        put(&mut f, ph, u64::from(PT_INTERP), 4);
        if wide {
            put(&mut f, ph + 8, interp_at as u64, 8);
            put(&mut f, ph + 32, name.len() as u64, 8);
        } else {
            put(&mut f, ph + 4, interp_at as u64, 4);
            put(&mut f, ph + 16, name.len() as u64, 4);
        }
        f.extend_from_slice(name);
    }
    f
}

fn elf_of(dir: &TempDir, bytes: &[u8]) -> Result<Option<PathBuf>, String> {
    let path = dir.path().join("elf");
    fs::write(&path, bytes).unwrap();
    let file = File::open(&path).unwrap();
    elf_interpreter(&file, &bytes[..bytes.len().min(BINPRM_BUF_SIZE)])
}

#[test]
fn elf_interpreter_is_read_like_load_elf_binary() {
    let dir = TempDir::new("elf");
    for (wide, big) in [(true, false), (true, true), (false, false), (false, true)] {
        let elf = fake_elf(wide, big, ET_DYN, Some(b"/lib/ld-test.so.1\0"));
        assert_eq!(
            elf_of(&dir, &elf),
            Ok(Some(PathBuf::from("/lib/ld-test.so.1"))),
            "wide {wide} big {big}"
        );
        let elf = fake_elf(wide, big, ET_EXEC, None);
        assert_eq!(
            elf_of(&dir, &elf),
            Ok(None),
            "static, wide {wide} big {big}"
        );
    }
    // A C string: what follows the first NUL does not count.
    let elf = fake_elf(true, false, ET_EXEC, Some(b"/lib/ld.so\0junk\0"));
    assert_eq!(elf_of(&dir, &elf), Ok(Some(PathBuf::from("/lib/ld.so"))));
    // What the kernel refuses (ENOEXEC).
    let unterminated = fake_elf(true, false, ET_DYN, Some(b"/lib/ld.so"));
    assert!(elf_of(&dir, &unterminated).unwrap_err().contains("NUL"));
    let too_short = fake_elf(true, false, ET_DYN, Some(b"\0"));
    assert!(elf_of(&dir, &too_short).is_err());
    let object = fake_elf(true, false, 1, Some(b"/lib/ld.so\0"));
    assert!(
        elf_of(&dir, &object)
            .unwrap_err()
            .contains("not an executable")
    );
    let mut bad_entry = fake_elf(true, false, ET_DYN, Some(b"/lib/ld.so\0"));
    bad_entry[0x36] = 40;
    assert!(elf_of(&dir, &bad_entry).is_err());
    let elf = fake_elf(true, false, ET_DYN, Some(b"/lib/ld.so\0"));
    assert!(
        elf_of(&dir, &elf[..100]).is_err(),
        "truncated program headers"
    );
    // Not ELF at all.
    assert_eq!(elf_of(&dir, b"#!/bin/sh\n"), Ok(None));
    assert_eq!(elf_of(&dir, b""), Ok(None));

    // A real one.
    let sh = File::open("/bin/sh").unwrap();
    let mut head = Vec::new();
    (&sh)
        .take(BINPRM_BUF_SIZE as u64)
        .read_to_end(&mut head)
        .unwrap();
    let ld = elf_interpreter(&sh, &head)
        .unwrap()
        .expect("/bin/sh is dynamic");
    assert!(ld.is_absolute() && ld.exists(), "{}", ld.display());
}

// ---------------------------------------------------------------------------------------------
// Chains (root: the temporary files are root's only when the tests run as root)

#[test]
fn system_programs_pass() {
    check(Path::new("/bin/sh")).unwrap();
    check(Path::new("/usr/bin/true")).unwrap();
    check_program(
        &[
            "/usr/bin/env".into(),
            "sh".into(),
            "-c".into(),
            "true".into(),
        ],
        "/usr/bin:/bin",
    )
    .unwrap();
    refused(
        check(Path::new("/nonexistent-spawnd/x")),
        ProgramProblem::CannotRun,
        &["/nonexistent-spawnd does not exist"],
    );
    refused(
        check(Path::new("/etc/passwd")),
        ProgramProblem::CannotRun,
        &["not executable"],
    );
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn scripts_and_their_interpreters() {
    require_root();
    let dir = TempDir::new("chain");
    let base = dir.path();
    let bin = base.join("bin");
    make_dir(&bin, 0o755);
    let run = bin.join("run");

    // A script with a safe interpreter.
    make_file(&run, 0o755); // #!/bin/sh
    check(&run).unwrap();

    // A venv-like python: a chain of root-owned links into the system (/bin → usr/bin too).
    let venv = base.join("venv");
    make_dir(&venv, 0o755);
    make_dir(&venv.join("bin"), 0o755);
    let python = venv.join("bin/python");
    symlink("python3", &python).unwrap();
    symlink("/bin/sh", venv.join("bin/python3")).unwrap();
    write_script(&run, &format!("#!{}\n", python.display()), 0o755);
    check(&run).unwrap();
    if Path::new("/usr/bin/python3").exists() {
        fs::remove_file(venv.join("bin/python3")).unwrap();
        symlink("/usr/bin/python3", venv.join("bin/python3")).unwrap();
        check(&run).unwrap();
    }

    // The interpreter's directory belongs to someone else.
    let theirs = base.join("theirs");
    make_dir(&theirs, 0o755);
    let their_python = theirs.join("python");
    make_file(&their_python, 0o755);
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    write_script(&run, &format!("#!{} -u\n", their_python.display()), 0o755);
    let e = check(&run).unwrap_err();
    assert_eq!(e.problem, ProgramProblem::Unsafe, "{e}");
    assert_eq!(e.path, theirs);
    assert_eq!(
        e.chain,
        format!("{} → #! {} -u", run.display(), their_python.display())
    );
    assert_eq!(
        e.message,
        format!(
            "the #! interpreter of {run}: {theirs} is owned by nobody (uid 65534), not root; \
             run chown root {theirs}; or name an interpreter that only root can change in the \
             #! line of {run} (chain: {run} → #! {python} -u)",
            run = run.display(),
            theirs = theirs.display(),
            python = their_python.display()
        )
    );
    // The interpreter file itself belongs to someone else.
    let their_file = bin.join("their-python");
    make_file(&their_file, 0o755);
    std::os::unix::fs::chown(&their_file, Some(65534), None).unwrap();
    write_script(&run, &format!("#!{}\n", their_file.display()), 0o755);
    refused(
        check(&run),
        ProgramProblem::Unsafe,
        &["not root", &their_file.display().to_string()],
    );

    // Group- or other-writable directories of the interpreter.
    for mode in [0o775, 0o757] {
        let open = base.join(format!("open{mode:o}"));
        make_dir(&open, mode);
        let interp = open.join("python");
        make_file(&interp, 0o755);
        write_script(&run, &format!("#!{}\n", interp.display()), 0o755);
        refused(
            check(&run),
            ProgramProblem::Unsafe,
            &[
                &format!("{} is writable by group or others", open.display()),
                "chmod go-w",
            ],
        );
    }

    // A link chain from the venv into a bad directory: every hop is shown.
    let gw = base.join("open775");
    fs::remove_file(venv.join("bin/python3")).unwrap();
    symlink(gw.join("python"), venv.join("bin/python3")).unwrap();
    write_script(&run, &format!("#!{}\n", python.display()), 0o755);
    refused(
        check(&run),
        ProgramProblem::Unsafe,
        &[
            &format!("{} is writable by group or others", gw.display()),
            &format!("(chain: {} → #! {})", run.display(), python.display()),
        ],
    );

    // A missing interpreter is a broken install, not a refusal.
    let missing = bin.join("missing");
    write_script(&run, &format!("#!{}\n", missing.display()), 0o755);
    refused(
        check(&run),
        ProgramProblem::CannotRun,
        &[
            &format!("{} does not exist", missing.display()),
            "install it, or fix the #! line of",
        ],
    );
    assert!(check(&run).unwrap_err().is_missing());
    // So is one that is not executable, and a #! line the kernel refuses.
    let plain = bin.join("plain");
    make_file(&plain, 0o644);
    write_script(&run, &format!("#!{}\n", plain.display()), 0o755);
    refused(check(&run), ProgramProblem::CannotRun, &["not executable"]);
    write_script(&run, "#!   \nexit 0\n", 0o755);
    refused(
        check(&run),
        ProgramProblem::CannotRun,
        &["starts with #! but it names no interpreter"],
    );

    // A relative interpreter would be looked up in the user's home.
    write_script(&run, "#!python3\n", 0o755);
    refused(
        check(&run),
        ProgramProblem::Unsafe,
        &["relative path", "full path"],
    );
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn nested_interpreters_stop_at_four() {
    require_root();
    let dir = TempDir::new("nest");
    // s0 runs /bin/sh; s(i) runs s(i-1): executing s(n) goes through n + 1 interpreters.
    let mut previous = PathBuf::from("/bin/sh");
    let mut scripts = Vec::new();
    for i in 0..5 {
        let script = dir.path().join(format!("s{i}"));
        write_script(&script, &format!("#!{}\n", previous.display()), 0o755);
        scripts.push(script.clone());
        previous = script;
    }
    check(&scripts[3]).unwrap();
    refused(
        check(&scripts[4]),
        ProgramProblem::CannotRun,
        &["more than 4 nested #! interpreters", "/bin/sh"],
    );
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn sticky_directories() {
    require_root();
    let dir = TempDir::new("sticky");
    let base = dir.path();
    let sticky = base.join("sticky");
    make_dir(&sticky, 0o1777);

    // Directly inside: others could put files beside it.
    let direct = sticky.join("server");
    make_file(&direct, 0o755);
    let e = check(&direct).unwrap_err();
    assert_eq!(e.problem, ProgramProblem::Unsafe);
    assert_eq!(e.path, sticky);
    assert!(
        e.message.starts_with(&format!(
            "{} holds {} and is writable by group or others (mode 1777)",
            sticky.display(),
            direct.display()
        )) && e
            .message
            .contains(&format!("run chmod go-w {}", sticky.display())),
        "{e}"
    );
    // So is a link to a good file, placed there.
    let good_dir = sticky.join("a");
    make_dir(&good_dir, 0o755);
    make_dir(&good_dir.join("b"), 0o755);
    let deep = good_dir.join("b/server");
    make_file(&deep, 0o755);
    let link = sticky.join("link");
    symlink(&deep, &link).unwrap();
    refused(
        check(&link),
        ProgramProblem::Unsafe,
        &[&format!("{} holds {}", sticky.display(), link.display())],
    );
    // Two levels below a sticky directory: fine (the sticky bit protects root's entries).
    check(&deep).unwrap();
    // A link elsewhere pointing into the sticky directory: the file's own directory counts.
    let elsewhere = base.join("bin");
    make_dir(&elsewhere, 0o755);
    let to_direct = elsewhere.join("to-direct");
    symlink(&direct, &to_direct).unwrap();
    refused(
        check(&to_direct),
        ProgramProblem::Unsafe,
        &[&format!("{} holds {}", sticky.display(), direct.display())],
    );

    // An interpreter directly inside a sticky directory.
    let interp = sticky.join("python");
    make_file(&interp, 0o755);
    let run = elsewhere.join("run");
    write_script(&run, &format!("#!{}\n", interp.display()), 0o755);
    refused(
        check(&run),
        ProgramProblem::Unsafe,
        &[
            &format!("the #! interpreter of {}", run.display()),
            &format!("{} holds {}", sticky.display(), interp.display()),
        ],
    );
    // ... and two levels below one.
    write_script(&run, &format!("#!{}\n", deep.display()), 0o755);
    check(&run).unwrap();
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn env_finds_its_program_in_the_profiles_path() {
    require_root();
    let dir = TempDir::new("env");
    let base = dir.path();
    let bin = base.join("bin");
    make_dir(&bin, 0o755);
    let run = bin.join("run");
    let tools = base.join("tools");
    make_dir(&tools, 0o755);
    let tool = tools.join("spawnd-tool");
    make_file(&tool, 0o755);
    let path = |dirs: &[&Path]| -> String {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };
    let with = |dirs: &[&Path]| check_program(&command(&[&run]), &path(dirs));
    let usr_bin = Path::new("/usr/bin");

    // Found, in the profile's path (not in the daemon's).
    write_script(&run, "#!/usr/bin/env spawnd-tool\n", 0o755);
    with(&[usr_bin, &tools]).unwrap();
    // Not found.
    refused(
        with(&[usr_bin]),
        ProgramProblem::CannotRun,
        &["env finds no program \"spawnd-tool\"", "/usr/bin"],
    );
    // A full path is checked as it is.
    write_script(&run, &format!("#!/usr/bin/env {}\n", tool.display()), 0o755);
    with(&[usr_bin]).unwrap();
    // Options, assignments, nothing, a relative path: refused.
    for (line, problem, words) in [
        (
            "#!/usr/bin/env -S spawnd-tool -u",
            ProgramProblem::Unsafe,
            &[
                "an option (\"-S spawnd-tool -u\")",
                "name the interpreter directly",
            ][..],
        ),
        (
            "#!/usr/bin/env -i spawnd-tool",
            ProgramProblem::Unsafe,
            &["an option"],
        ),
        (
            "#!/usr/bin/env PYTHONPATH=/tmp spawnd-tool",
            ProgramProblem::Unsafe,
            &["a variable assignment"],
        ),
        ("#!/usr/bin/env", ProgramProblem::CannotRun, &["endlessly"]),
        (
            "#!/usr/bin/env ./spawnd-tool",
            ProgramProblem::Unsafe,
            &["relative path"],
        ),
        (
            "#!/usr/bin/env spawnd-tool -u",
            ProgramProblem::CannotRun,
            &["as one name"],
        ),
    ] {
        write_script(&run, &format!("{line}\n"), 0o755);
        refused(with(&[&tools]), problem, words);
    }

    // What env runs gets the same checks.
    write_script(&run, "#!/usr/bin/env spawnd-tool\n", 0o755);
    std::os::unix::fs::chown(&tool, Some(65534), None).unwrap();
    refused(
        with(&[&tools]),
        ProgramProblem::Unsafe,
        &[
            "env's search of the profile's path for spawnd-tool",
            &format!("{} is owned by nobody", tool.display()),
            "instead of through env",
        ],
    );
    std::os::unix::fs::chown(&tool, Some(0), None).unwrap();

    // A directory searched before the program, where others could plant their own.
    let open = base.join("open");
    make_dir(&open, 0o777);
    let sticky = base.join("sticky");
    make_dir(&sticky, 0o1777);
    refused(
        with(&[&open, &tools]),
        ProgramProblem::Unsafe,
        &[&format!(
            "{} is writable by group or others",
            open.display()
        )],
    );
    refused(
        with(&[&sticky, &tools]),
        ProgramProblem::Unsafe,
        &[
            "env's search of the profile's path for spawnd-tool",
            &format!(
                "{} is writable by group or others (mode 1777)",
                sticky.display()
            ),
        ],
    );
    // Missing, where others could create it.
    refused(
        with(&[&sticky.join("bin"), &tools]),
        ProgramProblem::Unsafe,
        &[&format!(
            "so others could create {}",
            sticky.join("bin").display()
        )],
    );
    // Missing where only root could create it, or something env skips: fine.
    with(&[&base.join("missing"), &tools]).unwrap();
    make_dir(&bin.join("spawnd-tool"), 0o755);
    with(&[&bin, &tools]).unwrap();
    // Directories after the program are never searched.
    with(&[&tools, &open]).unwrap();

    // A program some users may not execute does not end the search.
    let first = base.join("first");
    make_dir(&first, 0o755);
    make_file(&first.join("spawnd-tool"), 0o700);
    let later = base.join("later");
    make_dir(&later, 0o775);
    refused(
        with(&[&first, &later]),
        ProgramProblem::Unsafe,
        &[&format!("{} is writable", later.display())],
    );
    set_mode(&first.join("spawnd-tool"), 0o755);
    with(&[&first, &later]).unwrap();

    // env running env running ...: a loop ends.
    write_script(&tools.join("spawnd-a"), "#!/usr/bin/env spawnd-b\n", 0o755);
    write_script(&tools.join("spawnd-b"), "#!/usr/bin/env spawnd-a\n", 0o755);
    write_script(&run, "#!/usr/bin/env spawnd-a\n", 0o755);
    refused(with(&[&tools]), ProgramProblem::CannotRun, &["more than 4"]);
}

#[test]
fn env_as_the_command() {
    let path = "/usr/bin:/bin";
    let argv = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    check_program(&argv(&["/usr/bin/env", "sh", "-c", "true"]), path).unwrap();
    check_program(&argv(&["/usr/bin/env", "/bin/sh"]), path).unwrap();
    refused(
        check_program(&argv(&["/usr/bin/env"]), path),
        ProgramProblem::Unsafe,
        &["the hub's arguments would choose"],
    );
    refused(
        check_program(&argv(&["/usr/bin/env", "-i", "sh"]), path),
        ProgramProblem::Unsafe,
        &["an option"],
    );
    refused(
        check_program(&argv(&["/usr/bin/env", "A=1", "sh"]), path),
        ProgramProblem::Unsafe,
        &["a variable assignment"],
    );
    refused(
        check_program(&argv(&["/usr/bin/env", "no-such-program-spawnd"]), path),
        ProgramProblem::CannotRun,
        &["env finds no program"],
    );
}

/// Runs `program`, retrying while the kernel answers ETXTBSY: another test thread that forks
/// while this one still holds the freshly written file open for writing keeps a copy of that
/// descriptor until its child execs, and until then the file cannot be executed.
fn run_when_not_busy(program: &Path) -> std::process::Output {
    let mut tries = 0;
    loop {
        match Command::new(program).output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

/// A copy of /bin/true whose PT_INTERP names a loader in a directory the test controls.
#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn the_elf_interpreter_is_checked() {
    require_root();
    let original = fs::read("/bin/true").unwrap();
    let real_ld = elf_interpreter(&File::open("/bin/true").unwrap(), &original[..256])
        .unwrap()
        .expect("/bin/true is dynamic");
    let real_name = real_ld.as_os_str().as_bytes();
    // A short directory of our own at the top of /tmp, so that its path fits in the old one.
    let ld_dir = PathBuf::from(format!("/tmp/spld{}", std::process::id() % 100_000));
    let fake_ld = ld_dir.join("ld");
    let fake_name = fake_ld.as_os_str().as_bytes();
    assert!(fake_name.len() < real_name.len());
    let at = original
        .windows(real_name.len() + 1)
        .position(|w| w[..real_name.len()] == *real_name && w[real_name.len()] == 0)
        .expect("the PT_INTERP string");
    let mut patched = original.clone();
    patched[at..at + real_name.len()].fill(0);
    patched[at..at + fake_name.len()].copy_from_slice(fake_name);

    let dir = TempDir::new("elf-interp");
    let program = dir.path().join("true");
    fs::write(&program, &patched).unwrap();
    set_mode(&program, 0o755);
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _ = fs::remove_dir_all(&ld_dir);
    make_dir(&ld_dir, 0o755);
    let _cleanup = Remove(ld_dir.clone());

    // Missing: the kernel would fail with ENOENT.
    refused(
        check(&program),
        ProgramProblem::CannotRun,
        &[
            &format!("the ELF interpreter of {}", program.display()),
            &format!("{} does not exist", fake_ld.display()),
        ],
    );
    // A root-owned copy of the real loader: fine, and the kernel really runs the program so.
    fs::copy(fs::canonicalize(&real_ld).unwrap(), &fake_ld).unwrap();
    set_mode(&fake_ld, 0o755);
    check(&program).unwrap();
    assert!(run_when_not_busy(&program).status.success());
    // The loader's directory writable by others.
    set_mode(&ld_dir, 0o777);
    refused(
        check(&program),
        ProgramProblem::Unsafe,
        &[
            &format!("the ELF interpreter of {}", program.display()),
            &format!("{} is writable by group or others", ld_dir.display()),
            &format!("ELF interpreter {}", fake_ld.display()),
        ],
    );
    set_mode(&ld_dir, 0o755);
    // The loader owned by someone else.
    std::os::unix::fs::chown(&fake_ld, Some(65534), None).unwrap();
    refused(check(&program), ProgramProblem::Unsafe, &["not root"]);
}

#[test]
#[ignore = "needs root: run as root with --include-ignored"]
fn profiles_report_the_chain_under_the_command_key() {
    require_root();
    let dir = TempDir::new("profile");
    let bin = dir.path().join("bin");
    make_dir(&bin, 0o755);
    let run = bin.join("run");
    let open = dir.path().join("open");
    make_dir(&open, 0o777);
    let interp = open.join("python");
    make_file(&interp, 0o755);
    let config = |run: &Path, extra: &str| {
        format!(
            "hub_user = \"daemon\"\ngroup = \"nogroup\"\n[profiles.default]\ncommand = [{:?}]\n\
             {extra}\n",
            run.display().to_string()
        )
    };
    let problems = |text: &str| match crate::config::Config::parse(text, Path::new("/x.toml")) {
        Ok(_) => panic!("expected problems for:\n{text}"),
        Err(e) => e.problems,
    };

    write_script(&run, &format!("#!{}\n", interp.display()), 0o755);
    let found = problems(&config(&run, ""));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "profiles.default.command");
    assert!(
        found[0].message.starts_with(&format!(
            "the executable {:?} cannot be trusted: the #! interpreter of",
            run.display().to_string()
        )) && found[0].message.contains(&interp.display().to_string()),
        "{found:#?}"
    );

    let missing = bin.join("missing");
    write_script(&run, &format!("#!{}\n", missing.display()), 0o755);
    let found = problems(&config(&run, ""));
    assert!(
        found[0].message.contains("cannot run")
            && found[0]
                .message
                .contains(&format!("{} does not exist", missing.display())),
        "{found:#?}"
    );

    // env searches the profile's path; a bad path is reported once, under path.
    write_script(&run, "#!/usr/bin/env sh\n", 0o755);
    crate::config::Config::parse(&config(&run, "path = \"/usr/bin:/bin\""), Path::new("/x"))
        .unwrap();
    let found = problems(&config(
        &run,
        &format!("path = \"{}:/usr/bin\"", open.display()),
    ));
    assert!(
        found[0]
            .message
            .contains("env's search of the profile's path for sh"),
        "{found:#?}"
    );
    let found = problems(&config(&run, "path = \"relative:/usr/bin\""));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].key, "profiles.default.path");
}
