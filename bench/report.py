"""Turns bench/run.py's results into the tables of BENCHMARKS.md.

The generated part sits between two marker lines; whatever BENCHMARKS.md holds outside them
(the analysis written by people) is kept when the file is rewritten.
"""

import random
from pathlib import Path

MARK_BEGIN = "<!-- scripts/bench: generated from here -->"
MARK_END = "<!-- scripts/bench: generated up to here -->"

MIB = 1024


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d or d[p] is None:
            return None
        d = d[p]
    return d


def us(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f} s"
    if v >= 1e3:
        return f"{v / 1e3:.2f} ms"
    return f"{v:.1f} µs"


def ms(v):
    return "–" if v is None else f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def mib(k):
    return "–" if k is None else f"{k / MIB:.1f} MiB"


def ratio(a, b):
    if not a or not b:
        return "–"
    r = a / b
    if r < 0.1:
        return f"1/{1 / r:,.0f}"
    if r >= 100:
        return f"{r:,.0f}×"
    if r >= 10:
        return f"{r:.1f}×"
    return f"{r:.2f}×"


def med(s):
    return get(s, "median_us")


def p99(s):
    return get(s, "p99_us")


def verdict(ok, quick):
    if quick:
        return "(quick run: not judged)"
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**missed**"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def targets(r):
    q = r.get("quick")
    sp = r.get("spawners", {})
    d = r.get("daemon", {})
    sc = r.get("scale", {})
    rows = []

    sudo_start = med(get(sp, "sudo", "wall", "start"))
    spawnd_start = med(get(sp, "spawnd", "wall", "start"))
    rust_start = med(get(d, "spawn", "start"))
    nocg_start = med(get(r, "nocgroup", "spawnd", "wall", "start"))
    ok = None if not (sudo_start and spawnd_start) else sudo_start / spawnd_start >= 100
    nocg = (f"; with `cgroup = \"off\"` {us(nocg_start)}: {ratio(sudo_start, nocg_start)}"
            if nocg_start else "")
    rows.append([
        "start request ≥ 100× faster than SudoSpawner's start()",
        f"SpawndSpawner.start() {us(spawnd_start)} vs {us(sudo_start)}: "
        f"**{ratio(sudo_start, spawnd_start)}** (Rust client start-to-running {us(rust_start)}: "
        f"{ratio(sudo_start, rust_start)}){nocg}",
        verdict(ok, q),
    ])

    def cpu(kind):
        c = get(sp, kind, "cpu_ms_per_action", "start")
        return None if c is None else c["self"] + c["children"] + c["daemon"]

    c_sudo, c_spawnd = cpu("sudo"), cpu("spawnd")
    m_sudo = get(sp, "sudo_footprint", "peak_rss_kib")
    m_spawnd = get(sp, "spawnd", "daemon_hwm_kib")
    ok = None
    if c_sudo and c_spawnd is not None and m_sudo and m_spawnd:
        ok = c_spawnd < c_sudo / 2 and m_spawnd < m_sudo / 2
    rows.append([
        "… at a fraction of its CPU and memory",
        f"CPU per start {ms(c_spawnd)} (hub + daemon) vs {ms(c_sudo)} (hub + sudo + mediator): "
        f"{ratio(c_spawnd, c_sudo)}; memory: the whole daemon {mib(m_spawnd)} (peak) vs "
        f"{mib(m_sudo)} peak per sudo action",
        verdict(ok, q),
    ])

    after = get(d, "spawn", "stop_after_exit")
    ok = None if after is None else med(after) <= 20000
    rows.append([
        "stop() of a server that exits on its first signal returns ≤ 20 ms after the exit",
        f"Stopped arrives {us(med(after))} after the exit (p99 {us(p99(after))}); "
        f"SpawndSpawner.stop() {us(med(get(sp, 'spawnd', 'wall', 'stop')))} in all",
        verdict(ok, q),
    ])

    for placement, label in (("same", "one core"), ("cross", "across cores"), ("free", "unpinned")):
        poll = med(get(d, f"rtt_{placement}", "poll"))
        blocking = med(get(d, f"rtt_{placement}", "poll_blocking"))
        echo = med(get(d, f"echo_{placement}", "rtt"))
        if poll is None and echo is None:
            continue
        best = min((x for x in (poll, blocking) if x), default=None)
        ok = None if not (best and echo) else best <= 1.5 * echo
        said = f"async `Client` {us(poll)}: **{ratio(poll, echo)}**"
        if blocking:
            said += f"; `BlockingClient` {us(blocking)}: **{ratio(blocking, echo)}**"
        rows.append([
            f"poll round trip (Rust) ≤ 1.5× bare echo, {label}",
            f"{said} (echo {us(echo)})",
            verdict(ok, q),
        ])

    sp_poll = med(get(sp, "spawnd", "wall", "poll"))
    rows.append([
        "poll through SpawndSpawner ≤ 250 µs median",
        f"{us(sp_poll)} (p99 {us(p99(get(sp, 'spawnd', 'wall', 'poll')))})",
        verdict(None if sp_poll is None else sp_poll <= 250, q),
    ])

    bare = med(get(d, "bare_none", "spawn"))
    ok = None if not (rust_start and bare) else rust_start <= 2 * bare
    nocg_rust = med(get(r, "nocgroup", "spawn", "start"))
    clone3 = med(get(d, "bare_clone3", "spawn"))
    extra = ""
    if nocg_rust:
        extra += f"; with `cgroup = \"off\"` {us(nocg_rust)}: {ratio(nocg_rust, bare)}"
    if clone3:
        extra += (f"; the floor with a fresh cgroup entered by clone3(CLONE_INTO_CGROUP) is "
                  f"{us(clone3)}: {ratio(rust_start, clone3)}")
    setpriv = med(get(d, "setpriv", "run"))
    if setpriv:
        extra += (f"; `setpriv --reuid --regid --init-groups /bin/true` (the issue's example, "
                  f"which also looks the user up; run to exit) is {us(setpriv)}: "
                  f"{ratio(rust_start, setpriv)}")
    rows.append([
        "start-to-running ≤ 2× bare fork + setgroups/setgid/setuid + exec",
        f"{us(rust_start)} vs {us(bare)}: **{ratio(rust_start, bare)}**{extra}",
        verdict(ok, q),
    ])

    n = sc.get("servers")
    rss = sc.get("rss_kib")
    rows.append([
        "10,000 supervised servers: daemon RSS ≤ 64 MiB",
        f"{mib(rss)} with {n} servers" if n else "–",
        verdict(None if rss is None or n is None or q else rss <= 64 * MIB, q),
    ])
    lst = get(sc, "spawnctl_list")
    rows.append([
        "listing them (`spawnctl list --json`) ≤ 200 ms",
        f"{us(med(lst))} (p99 {us(p99(lst))}) for {sc.get('listed', '–')} servers" if lst else "–",
        verdict(None if lst is None else med(lst) <= 200000, q),
    ])
    tp = get(sc, "throughput_64x1", "polls_per_s")
    rows.append([
        "≥ 50,000 polls/s with 64 concurrent clients",
        f"{tp:,.0f} polls/s" if tp else "–",
        verdict(None if tp is None else tp >= 50000, q),
    ])
    return table(["target (issue 6)", "measured in this run", "verdict"], rows)


def section_spawners(r):
    sp = dict(r.get("spawners", {}))
    if get(r, "nocgroup", "spawnd"):
        sp["spawnd-nocg"] = r["nocgroup"]["spawnd"]
    names = [
        ("spawnd", "SpawndSpawner (wait_for_port=False)"),
        ("spawnd-nocg", "SpawndSpawner (wait_for_port=False), spawnd with `cgroup = \"off\"`"),
        ("spawnd-wait", "SpawndSpawner (wait_for_port=True, the default)"),
        ("local", "LocalProcessSpawner (hub as root)"),
        ("sudo", "SudoSpawner (sudo + mediator)"),
    ]
    sudo = sp.get("sudo", {})
    out = []
    for action in ("start", "listening", "poll", "stop"):
        rows = []
        for key, label in names:
            s = get(sp, key, "wall", action)
            if s is None:
                continue
            ref = get(sudo, "wall", action)
            rows.append([label, s["n"], us(med(s)), us(p99(s)),
                         "1×" if key == "sudo" else ratio(med(ref), med(s))])
        title = {
            "start": "`start()` (until it returns)",
            "listening": "start → the server accepts connections (start() called → TCP connect "
                         "succeeds, checked every 0.2 ms)",
            "poll": "`poll()` of a running server",
            "stop": "`stop()` of a server that exits on SIGINT",
        }[action]
        out.append(f"#### {title}\n\n" + table(
            ["spawner", "n", "median", "p99", "SudoSpawner ÷ this"], rows))
    rows = []
    for key, label in names:
        s = sp.get(key)
        if not s:
            continue
        c = s["cpu_ms_per_action"]
        mem = (f"daemon {mib(s.get('daemon_rss_kib'))} RSS (peak {mib(s.get('daemon_hwm_kib'))}), "
               "shared by all servers") if key.startswith("spawnd") else (
            f"{mib(get(sp, 'sudo_footprint', 'peak_rss_kib'))} peak (sudo + mediator)"
            if key == "sudo" else "in the hub process")
        res = s.get("resident_per_server_kib") or 0
        rows.append([
            label,
            f"{c['start']['self']:.2f} + {c['start']['children']:.2f} + {c['start']['daemon']:.2f}",
            f"{c['poll']['self']:.3f} + {c['poll']['children']:.3f} + {c['poll']['daemon']:.3f}",
            f"{c['stop']['self']:.2f} + {c['stop']['children']:.2f} + {c['stop']['daemon']:.2f}",
            mem,
            mib(res) if res else "none",
        ])
    fp = sp.get("sudo_footprint")
    note = ""
    if fp:
        note = (f"\n\nOne SudoSpawner signal action measured alone (a small parent runs `sudo -u "
                f"USER -nH sudospawner` {fp['actions']}×): {fp['wall_s'] * 1e3:.0f} ms wall, "
                f"{fp['cpu_s_per_action'] * 1e3:.0f} ms CPU, {mib(fp['peak_rss_kib'])} peak RSS. "
                "LocalProcessSpawner's stop CPU includes the reaped server's own CPU (the hub is "
                "its parent); with `cgroup = \"off\"` the servers stay in spawnd's cgroup, so its "
                "figure includes the servers' CPU too.")
    out.append(
        "#### CPU (ms per action: hub process + its children + spawnd) and memory\n\n"
        + table(["spawner", "start", "poll", "stop", "memory per action",
                 "resident per running server, besides the server"], rows) + note)
    return "\n\n".join(out)


def section_daemon(r):
    d = r.get("daemon", {})
    rows = []
    for placement, label in (("same", "one core (client and daemon on CPU 0)"),
                             ("cross", "across cores (client CPU 0, daemon CPU 1)"),
                             ("free", "unpinned")):
        echo = get(d, f"echo_{placement}", "rtt")
        rtt = d.get(f"rtt_{placement}")
        if not echo and not rtt:
            continue
        rows.append([f"bare SOCK_SEQPACKET echo, {label}", us(med(echo)), us(p99(echo)), "1× (floor)"])
        ce = get(d, f"echo_client_{placement}", "rtt")
        if ce:
            rows.append([f"spawnd Rust client ↔ the bare echo (the client library's share), {label}",
                         us(med(ce)), us(p99(ce)), ratio(med(ce), med(echo))])
        raw = get(rtt, "poll_raw")
        if raw:
            rows.append([f"poll via spawnd, bare blocking send/recv (the daemon's share), {label}",
                         us(med(raw)), us(p99(raw)), ratio(med(raw), med(echo))])
        for op in ("poll", "status", "list"):
            s = get(rtt, op)
            rows.append([f"{op} via spawnd, {label}", us(med(s)), us(p99(s)),
                         ratio(med(s), med(echo))])
        s = get(rtt, "poll_blocking")
        if s:
            rows.append([f"poll via spawnd, the Rust `BlockingClient`, {label}", us(med(s)),
                         us(p99(s)), ratio(med(s), med(echo))])
    t1 = table(["round trip", "median", "p99", "÷ echo"], rows)

    bare = get(d, "bare_none", "spawn")
    rows = []
    for key, label in (("bare_none", "bare fork + setgroups/setresgid/setresuid + exec (floor)"),
                       ("bare_write", "… + mkdir a cgroup, child writes cgroup.procs (daemon's way)"),
                       ("bare_clone3", "… + mkdir a cgroup, clone3(CLONE_INTO_CGROUP)")):
        s = get(d, key, "spawn")
        if s:
            rows.append([label, us(med(s)), us(p99(s)), us(get(s, "min_us")),
                         ratio(med(s), med(bare))])
    s = get(d, "spawn", "start")
    rows.append(["spawnd start-to-running (Start sent → Started, after exec)", us(med(s)),
                 us(p99(s)), us(get(s, "min_us")), ratio(med(s), med(bare))])
    s = get(r, "nocgroup", "spawn", "start")
    if s:
        rows.append(["spawnd start-to-running, `cgroup = \"off\"`", us(med(s)), us(p99(s)),
                     us(get(s, "min_us")), ratio(med(s), med(bare))])
    s = get(d, "setpriv", "run")
    rows.append(["`setpriv --reuid --regid --init-groups /bin/true`, run to exit", us(med(s)),
                 us(p99(s)), us(get(s, "min_us")), ratio(med(s), med(bare))])
    s = get(d, "state_write", "write")
    if s:
        rows.append(["(for reference; since the fixes below a start no longer waits for it) one "
                     "durable record write: write, fsync, rename, fsync the directory, on the "
                     "state directory's file system",
                     us(med(s)), us(p99(s)), us(get(s, "min_us")), ratio(med(s), med(bare))])
    t2 = table(["start", "median", "p99", "min", "median ÷ bare"], rows)

    rows = []
    for src, tag in ((d, ""), (r.get("nocgroup", {}), ", `cgroup = \"off\"`")):
        for key, label in (("stop", "Stop round trip (SIGINT → exit → reaped → answered)"),
                           ("stop_after_exit", "Stopped answer after the exit (seen on a pidfd)")):
            s = get(src, "spawn", key)
            if s:
                rows.append([label + tag, us(med(s)), us(p99(s))])
    cpu = []
    for src, tag in ((d, ""), (r.get("nocgroup", {}), " (cgroup off)")):
        for key, label in (("daemon_cpu_us_per_start", "start"), ("daemon_cpu_us_per_stop", "stop")):
            v = get(src, "spawn", key)
            if v is not None:
                cpu.append(f"{label}{tag} {us(v)}")
    t3 = table(["stop", "median", "p99"], rows)
    extra = f"\n\nDaemon CPU per request (its cgroup's cpu.stat): {', '.join(cpu)}." if cpu else ""
    return (f"#### Round trips from the Rust client\n\n{t1}\n\n"
            f"#### Start-to-running beside the bare spawn\n\n{t2}\n\n"
            f"#### Stop\n\n{t3}{extra}")


HUB_SPAWNERS = (("spawnd", "spawnd (SpawndSpawner, hub as the hub user)"),
                ("sudo", "SudoSpawner (hub as the hub user)"),
                ("local", "LocalProcessSpawner (hub as root)"))


def rank_median(xs):
    """The median as the tables give it: nearest rank (of an even n, the lower middle)."""
    s = sorted(xs)
    return s[(len(s) + 1) // 2 - 1]


def bootstrap_median(xs, resamples=2000, seed=1):
    """95% percentile-bootstrap interval of rank_median(xs)."""
    rng = random.Random(seed)
    meds = sorted(rank_median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    return meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def signed(v):
    """Seconds as a signed difference: +120 ms, −1.20 s."""
    return ("+" if v >= 0 else "−") + us(abs(v) * 1e6)


def section_hub(r):
    h = r.get("hub", {})
    sudo = get(h, "sudo", "spawn_to_ready")
    rows = []
    for key, label in HUB_SPAWNERS:
        s = get(h, key, "spawn_to_ready")
        t = get(h, key, "stop")
        if s is None:
            continue
        rows.append([label, s["n"], us(med(s)), us(p99(s)),
                     "1×" if key == "sudo" else ratio(med(sudo), med(s)), us(med(t)), us(p99(t))])
    t1 = table(["spawner", "n", "REST start → ready, median", "p99", "SudoSpawner ÷ this",
                "REST stop → gone, median", "p99"], rows)
    # The hubs took turns, one spawn each per round: the i-th samples of two spawners come
    # from the same round, under the same load, so their differences are compared.
    a = get(h, "spawnd", "samples", "ready")
    b = get(h, "local", "samples", "ready")
    conf = ""
    if a and b and len(a) == len(b) and len(a) > 1:
        diffs = [x - y for x, y in zip(a, b)]
        d = rank_median(diffs)
        lo, hi = bootstrap_median(diffs)
        if hi < 0:
            word = "faster than LocalProcessSpawner"
        elif lo > 0:
            word = "slower than LocalProcessSpawner"
        else:
            word = "not distinguishable from LocalProcessSpawner at this n"
        conf = (f"\n\nspawnd minus LocalProcessSpawner: the medians above differ by "
                f"{signed(rank_median(a) - rank_median(b))}; round by round the median "
                f"difference is {signed(d)} (95% bootstrap interval {signed(lo)} to "
                f"{signed(hi)}) and spawnd was the faster in "
                f"{sum(x < y for x, y in zip(a, b))} of {len(a)} rounds: spawnd is {word}.")
    rows = []
    for key, label in HUB_SPAWNERS:
        st = get(h, key, "steps")
        cycles = get(h, key, "cycles")
        if not st:
            continue
        slack = [c["http_ok"] - c["listening"] for c in cycles or ()
                 if c.get("http_ok") is not None and c.get("listening") is not None]
        rows.append([label] + [us(med(get(st, k))) for k in
                               ("start_called", "listening", "start_returned", "http_ok", "ready")]
                    + [us(rank_median(slack) * 1e6) if slack else "–",
                       us(max(slack) * 1e6) if slack else "–"])
    t2 = table(["spawner", "start() called", "port listening", "start() returned",
                "hub's HTTP check answered", "ready seen", "listening → HTTP answered, median",
                "max"], rows)
    return (f"{t1}{conf}\n\nWhere the time goes: the median of each step, after the POST "
            f"(the hub's debug log; the port from `/proc/net/tcp`, every 2 ms; the model "
            f"polled every 20 ms):\n\n{t2}")


def section_scale(r):
    sc = r.get("scale", {})
    if not sc:
        return "(not run)"
    n = sc.get("servers")
    rows = [
        ["servers supervised", f"{n:,} ({sc.get('users')} users × {n // max(1, sc.get('users', 1)):,})"],
        ["daemon RSS idle / with all running / peak / after stopping them",
         f"{mib(sc.get('rss_idle_kib'))} / {mib(sc.get('rss_kib'))} / {mib(sc.get('hwm_kib'))} / "
         f"{mib(sc.get('rss_after_kib'))}"],
        ["daemon RSS per server",
         f"{(sc['rss_kib'] - sc['rss_idle_kib']) / n:.1f} KiB" if sc.get("rss_kib") and sc.get("rss_idle_kib") and n else "–"],
        ["daemon descriptors with all running / threads",
         f"{sc.get('fds')} / {sc.get('threads')}"],
        ["daemon RLIMIT_NOFILE (soft / hard) in this run",
         f"{get(sc, 'nofile', 'soft')} / {get(sc, 'nofile', 'hard')}"],
    ]
    st = sc.get("start", {})
    rows.append(["start all (32 in flight, one connection)",
                 f"{st.get('wall_s', 0):.1f} s, {st.get('per_s', 0):,.0f}/s, errors {get(st, 'errors', 'total')}"
                 f"; each start median {us(med(st.get('latency')))}, p99 {us(p99(st.get('latency')))}"])
    lst = sc.get("spawnctl_list")
    rows.append([f"`spawnctl list --json` ({sc.get('listed')} servers)",
                 f"median {us(med(lst))}, p99 {us(p99(lst))}"])
    la = get(sc, "list_all", "list")
    rows.append(["Client::list() alone (every page, no process start, no JSON)",
                 f"median {us(med(la))}, p99 {us(p99(la))}"])
    for key, label in (("poll_all_window32", "poll all, 32 in flight on one connection (Rust)"),
                       ("poll_all_window64", "poll all, 64 in flight on one connection (Rust; the daemon's limit)"),
                       ("poll_all_at_once", "poll all at once on one connection (Rust)")):
        s = sc.get(key, {})
        errs = get(s, "errors", "kinds") or {}
        e = ", ".join(f"{k}: {v['count']}" for k, v in errs.items()) or "none"
        rows.append([label, f"{s.get('wall_s', 0) * 1e3:.0f} ms, {s.get('ok')} answered, errors: {e}"])
    py = sc.get("poll_all_python", {})
    e = ", ".join(f"{k}: {v['count']}" for k, v in (py.get("errors") or {}).items()) or "none"
    rows.append(["poll all at once, `asyncio.gather` over the Python client (a restarted hub)",
                 f"{py.get('wall_s', 0) * 1e3:.0f} ms, {py.get('ok')} answered, errors: {e}"])
    st = sc.get("stop", {})
    rows.append(["stop all (32 in flight, one connection; each exits on SIGINT)",
                 f"{st.get('wall_s', 0):.1f} s, {st.get('per_s', 0):,.0f}/s, errors {get(st, 'errors', 'total')}"
                 f"; each stop median {us(med(st.get('latency')))}, p99 {us(p99(st.get('latency')))}"])
    t1 = table(["what", "measured"], rows)
    rows = []
    for key, label in (("throughput_1x1", "1"), ("throughput_8x1", "8"), ("throughput_64x1", "64"),
                       ("throughput_8x8", "8 × 8 in flight")):
        s = sc.get(key)
        if not s:
            continue
        rows.append([label, f"{s['polls_per_s']:,.0f}", s.get("failed"),
                     f"{s['client_cpu_us_per_poll']:.1f} µs",
                     "–" if s.get("daemon_cpu_us_per_poll") is None else f"{s['daemon_cpu_us_per_poll']:.1f} µs"])
    t2 = table(["concurrent clients (connections)", "polls/s", "failed",
                "client CPU per poll", "daemon CPU per poll"], rows)
    probe = r.get("nofile_probe")
    t3 = ""
    if probe:
        st = probe.get("start", {})
        errs = get(st, "errors", "kinds") or {}
        e = "; ".join(f"{k}: {v['count']} (first: {v['first'][:160]})" for k, v in errs.items()) or "none"
        sa = probe.get("status_after", {})
        t3 = ("\n\n#### Probe: a daemon with the soft RLIMIT_NOFILE systemd gives services by default\n\n"
              + table(["what", "measured"], [
                  ["soft RLIMIT_NOFILE the daemon was started with", "1024"],
                  ["daemon's RLIMIT_NOFILE once running (soft / hard)", f"{get(probe, 'nofile', 'soft')} / {get(probe, 'nofile', 'hard')}"],
                  ["servers asked for", f"{st.get('servers')}"],
                  ["started / refused", f"{st.get('ok')} / {get(st, 'errors', 'total')}"],
                  ["errors", e],
                  ["descriptors held afterwards", f"{probe.get('fds')}"],
                  ["`spawnctl status` afterwards", f"exit {sa.get('rc')} in {sa.get('s', 0) * 1e3:.0f} ms {sa.get('stderr', '')}"],
              ]))
    return (f"{t1}\n\n#### Poll throughput (closed loop: each client polls, waits for the answer, "
            f"polls again)\n\n{t2}{t3}")


def load_line(r):
    load = r.get("load") or {}
    if not load:
        return ""
    parts = [f"{k} {v['loadavg_end']:.1f}" + (f" ({v['cpu_pressure'] * 100:.0f}% CPU pressure)"
                                              if v.get("cpu_pressure") is not None else "")
             for k, v in load.items()]
    before = get(r, "machine", "loadavg_before")
    return ("Other work on the machine shows in the figures: load average before the run "
            f"{before:.1f}; at the end of each part: " + ", ".join(parts) + ".")


def render(r):
    m = r.get("machine", {})
    q = r.get("quick")
    dur = r.get("durations_s", {})
    parts = [
        MARK_BEGIN,
        "",
        "## Results" + (" (quick run: sizes too small to judge speed)" if q else ""),
        "",
        f"Measured {m.get('date')} with `sudo ./scripts/bench{' --quick' if q else ''}` "
        f"(run time {dur.get('total', 0):.0f} s).",
        "",
        table(["machine", ""], [
            ["cores", m.get("cores")], ["CPU", m.get("cpu")], ["memory", m.get("memory")],
            ["kernel", m.get("kernel")], ["OS", m.get("os")], ["spawnd", m.get("spawnd")],
            ["server trees", m.get("tree_kill")], ["sudo", m.get("sudo")],
            ["Python", m.get("python")], ["JupyterHub", m.get("jupyterhub")],
            ["sudospawner", m.get("sudospawner")],
        ]),
        "",
        load_line(r),
        "",
        "### Targets",
        "",
        targets(r),
        "",
        "### 1. Per-action cost at the hub's level",
        "",
        section_spawners(r),
        "",
        "### 2. Per-request cost at the daemon",
        "",
        section_daemon(r),
        "",
        "### 3. Spawn-to-ready through a real hub (real jupyterhub-singleuser)",
        "",
        section_hub(r),
        "",
        "### 4. Scale",
        "",
        section_scale(r),
    ]
    errors = r.get("errors") or {}
    if errors:
        parts += ["", "### Errors in this run", ""]
        parts += [f"- `{k}`: {v.splitlines()[-1] if v else ''}" for k, v in errors.items()]
    parts += ["", MARK_END]
    return "\n".join(str(p) for p in parts) + "\n"


def write(path, generated):
    """Replaces the generated part of `path`, keeping what is outside the markers."""
    try:
        old = path.read_text()
    except FileNotFoundError:
        old = ""
    if MARK_BEGIN in old and MARK_END in old:
        head = old.split(MARK_BEGIN, 1)[0]
        tail = old.split(MARK_END, 1)[1].lstrip("\n")
        text = head + generated + ("\n" + tail if tail else "")
    else:
        text = (old.rstrip() + "\n\n" if old else "# Benchmarks\n\n") + generated
    Path(path).write_text(text)


def summary(r):
    lines = ["", "spawnd benchmarks" + (" (quick: harness check only)" if r.get("quick") else "")]
    for line in targets(r).splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3:
            lines.append(f"  {cells[2]:<26} {cells[0]}: {cells[1]}")
    return "\n".join(lines)
