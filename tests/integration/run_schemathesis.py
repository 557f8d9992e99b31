#!/usr/bin/python3
"""Schemathesis (PyPI; not a Debian package) against a live stack: requests generated
from shared/openapi.json, every answer checked against the document.

    make test-schemathesis [SCHEMATHESIS=/path/to/st] [ST_EXAMPLES=N]

`make deps` installs the pinned Schemathesis (tests/integration/schemathesis-
requirements.txt) into build/stvenv, which is the default st; the suite fails, not
skips, when st is missing. Every check runs but one:
  positive_data_acceptance  a schema-valid request may still be refused for what it
                            holds: the body must be audio (415), a two-stem source must
                            be one of the model's (400).
ST_EXAMPLES (default 50) is the examples per operation and phase: the whole run (about
700 requests, every phase: coverage, fuzzing, stateful) takes 30 to 45 s on 2 shared
cores (100 took 50 to 60 s).
ST_SEED (default 1) makes a run repeatable.
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

REPO = harness.localstack.REPO_ROOT
DOC = os.path.join(REPO, "shared", "openapi.json")
DEFAULT_ST = os.path.join(REPO, "build", "stvenv", "bin", "st")


def junit_counts(report_dir):
    """(passed, failed) test cases of Schemathesis' JUnit report, or None."""
    passed = failed = 0
    found = False
    for name in os.listdir(report_dir) if os.path.isdir(report_dir) else ():
        if not name.endswith(".xml"):
            continue
        found = True
        for case in ET.parse(os.path.join(report_dir, name)).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
            elif case.find("skipped") is None:
                passed += 1
    return (passed, failed) if found else None


def main():
    st = os.environ.get("SCHEMATHESIS") or DEFAULT_ST
    if os.sep in st:
        st = os.path.abspath(st)  # it runs from the stack's prefix
    try:
        version = subprocess.run([st, "--version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        print("FAIL: schemathesis not found (%s: %s); `make deps` installs it" % (st, e))
        print("CASES: 0 passed, 1 failed, 0 skipped")
        return 1
    print("schemathesis: %s (%s)" % (version, st), flush=True)
    stack = harness.Stack(max_body="1m")
    harness.install_signal_cleanup(stack)
    try:
        stack.start()
        report_dir = os.path.join(stack.prefix, "st-report")
        cmd = [st, "run", DOC, "--url", "http://127.0.0.1:%d" % stack.port,
               "--max-examples", os.environ.get("ST_EXAMPLES", "50"),
               "--checks", "all", "--exclude-checks", "positive_data_acceptance",
               "--report", "junit", "--report-dir", report_dir,
               "--no-color", "--seed", os.environ.get("ST_SEED", "1")]
        print("$ " + " ".join(cmd), flush=True)
        # its cache (.hypothesis) goes into the prefix, removed with it
        res = subprocess.run(cmd, timeout=600, cwd=stack.prefix)
        counts = junit_counts(report_dir)
        if counts is None:
            counts = (1, 0) if res.returncode == 0 else (0, 1)
        passed, failed = counts
        if res.returncode != 0 and failed == 0:
            failed = 1  # st failed without a failed case in its report
        print("CASES: %d passed, %d failed, 0 skipped" % (passed, failed))
        if failed:
            print("nginx error log (tail):\n" + stack.error_log_tail(), flush=True)
            return 1
        print("PASS: %d cases" % passed)
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
