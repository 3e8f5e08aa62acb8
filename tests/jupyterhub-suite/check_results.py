"""Reads pytest's JUnit XML for test_spawner.py and judges it against expected.txt.

    python check_results.py JUNIT.xml expected.txt [--scope all|spawner|stock]
        [--jupyterhub MAJOR] [--partial]

Prints one line per test that did not pass (with its expected-failure reason when listed), the
tests that pass although expected to fail, and a closing summary line. Exit status:
1 when a test outside the scope's expected-failure list failed or fewer than its min_passed
passed (the count is not checked with --partial, for runs narrowed with -k), else 0.
"""

import argparse
import sys
import xml.etree.ElementTree as ET


def read_expected(path, scope, major=None):
    """expected.txt lines: `min_passed[SCOPE] N` and `fail[SCOPE,...] TEST REASON...`
    (# starts a comment line). A scope may name a JupyterHub major version, `spawner@4`: the
    line then applies to that version only, and its min_passed wins over the plain scope's."""
    min_passed, expected = 0, {}
    versioned_min = None
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            head, _, rest = line.partition(" ")
            word, _, scopes = head.partition("[")
            if not scopes.endswith("]") or word not in ("min_passed", "fail"):
                raise SystemExit(f"{path}:{number}: cannot read {line!r}")
            tokens = scopes[:-1].split(",")
            versioned = major is not None and f"{scope}@{major}" in tokens
            if scope not in tokens and not versioned:
                continue
            rest = rest.strip()
            if word == "min_passed":
                if versioned:
                    versioned_min = int(rest)
                else:
                    min_passed = int(rest)
            else:
                test, _, reason = rest.partition(" ")
                expected[test] = reason.strip()
    if versioned_min is not None:
        min_passed = versioned_min
    return min_passed, expected


def read_junit(path):
    """{test name: (outcome, message)} with outcome passed/failed/error/skipped. A test with a
    failure or error anywhere (setup, call, teardown) did not pass."""
    results = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or "").splitlines()[0:1]
                message = message[0] if message else ""
                break
            if child.tag == "skipped":
                # pytest writes an expected failure (xfail) as <skipped type="pytest.xfail">
                kind = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                outcome, message = kind, child.get("message") or ""
        results[name] = (outcome, message)
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("junit")
    ap.add_argument("expected")
    ap.add_argument("--scope", default="all", choices=["all", "spawner", "stock"])
    ap.add_argument("--jupyterhub", metavar="MAJOR", help="JupyterHub major version (3, 4, ...)")
    ap.add_argument("--partial", action="store_true")
    args = ap.parse_args()

    min_passed, expected = read_expected(args.expected, args.scope, args.jupyterhub)
    results = read_junit(args.junit)
    passed = sorted(t for t, (o, _) in results.items() if o == "passed")
    not_passed = sorted(t for t, (o, _) in results.items() if o != "passed")
    label = {
        "all": "SpawndSpawner for every server (scope all)",
        "spawner": "SpawndSpawner for new_spawner() (scope spawner)",
        "stock": "the stock spawners as root",
    }[args.scope]

    print(f"\n== JupyterHub test_spawner.py with {label}: {len(passed)} of {len(results)} pass")
    unexpected = []
    for t in not_passed:
        outcome, message = results[t]
        if t in expected:
            print(f"  {outcome:7} {t}  (expected: {expected[t]})")
        else:
            unexpected.append(t)
            print(f"  {outcome:7} {t}  UNEXPECTED: {message[:200]}")
    # A strict xfail that passed is reported by pytest as a failure "[XPASS(strict)]".
    now_passing = sorted(
        t
        for t in expected
        if results.get(t, ("",))[0] == "passed" or "XPASS" in results.get(t, ("", ""))[1]
    )
    for t in now_passing:
        print(f"  passes  {t}  (listed as an expected failure: update expected.txt)")

    ok = True
    if unexpected:
        print(f"FAIL: {len(unexpected)} test(s) failed that expected.txt does not list")
        ok = False
    if not args.partial and len(passed) < min_passed:
        print(f"FAIL: {len(passed)} passed, fewer than the recorded {min_passed}")
        ok = False
    verdict = "as expected" if ok else "REGRESSION"
    version = f"JupyterHub {args.jupyterhub}, " if args.jupyterhub else ""
    print(
        f"{version}{args.scope}: {len(passed)} of {len(results)} pass, "
        f"{len(not_passed) - len(unexpected)} "
        f"documented expected failures, {len(unexpected)} unexpected: {verdict}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
