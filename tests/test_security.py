"""bandit over the code that ships in the images: no finding that nobody reviewed.

A reviewed exception is a `# nosec BXXX - reason` on its line, so the reason sits where the
code is; this test also fails on a bare `# nosec` (every check off, nothing said).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("services/*/src"))


def test_bandit_finds_nothing_unreviewed_in_the_services() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bandit", "-q", "-r", *SHIPPED, "-f", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    report = json.loads(done.stdout)
    findings = [
        f"{r['filename']}:{r['line_number']}: {r['test_id']} {r['issue_text']}"
        for r in report["results"]
    ]
    assert not findings, "\n".join(findings)
    assert not report["errors"], report["errors"]
    assert report["metrics"]["_totals"]["loc"] > 1000  # it did read the code


def test_every_bandit_exception_names_its_check_and_says_why() -> None:
    bare = []
    for path in ROOT.glob("services/*/src/**/*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "# nosec" in line and not re.search(r"# nosec B\d{3}\s+-\s+\S", line):
                bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bare, "\n".join(bare)
