#!/usr/bin/python3
"""Schemathesis (PyPI; not a Debian package) against a live stack: requests generated
from shared/openapi.json, every answer checked against the document.

    make test-schemathesis SCHEMATHESIS=/path/to/venv/bin/st [ST_EXAMPLES=30]

Not part of `make test` (it needs a venv: python3 -m venv V && V/bin/pip install
schemathesis). Two checks are left out on purpose:
  positive_data_acceptance  a schema-valid request may still be refused for what it
                            holds: the body must be audio (415), a two-stem source must
                            be one of the model's (400);
  unsupported_method        nginx itself answers TRACE (405, its HTML page, no Allow)
                            while it reads the request headers, before any location.
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

DOC = os.path.join(harness.localstack.REPO_ROOT, "shared", "openapi.json")


def main():
    st = os.environ.get("SCHEMATHESIS", "st")
    try:
        subprocess.run([st, "--version"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        print("SKIP: schemathesis not found (SCHEMATHESIS=%s)" % st)
        return 0
    stack = harness.Stack(max_body="1m")
    harness.install_signal_cleanup(stack)
    try:
        stack.start()
        cmd = [st, "run", DOC, "-u", "http://127.0.0.1:%d" % stack.port,
               "-n", os.environ.get("ST_EXAMPLES", "30"), "--checks", "all",
               "--exclude-checks", "positive_data_acceptance,unsupported_method"]
        res = subprocess.run(cmd, timeout=900, cwd=stack.prefix)  # its cache goes there
        ok = res.returncode == 0
        print("CASES: %d passed, %d failed, 0 skipped" % (int(ok), int(not ok)))
        return 0 if ok else 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
