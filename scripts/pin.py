"""Pin every third-party dependency version into pyproject.toml.

The project commits no uv.lock (it would carry the registry's download addresses), so the
exact versions live in `[tool.uv] constraint-dependencies` and every `uv lock` on a fresh
clone resolves to them. Run `make pin` after changing dependencies; it resolves anew
(`uv lock --upgrade`) and rewrites the block between the markers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "# BEGIN pins (make pin)"
END = "# END pins"


def main() -> int:
    pyproject = ROOT / "pyproject.toml"
    text = pyproject.read_text()
    # Resolve without the old pins so upgrades are possible, then export the result.
    unpinned = re.sub(rf"{re.escape(BEGIN)}.*?{re.escape(END)}\n", "", text, flags=re.S)
    pyproject.write_text(unpinned)
    try:
        subprocess.run(["uv", "lock", "--upgrade", "--quiet"], cwd=ROOT, check=True)
        exported = subprocess.run(
            [
                "uv",
                "export",
                "--frozen",
                "--no-hashes",
                "--no-emit-workspace",
                "--no-header",
                "--no-annotate",
                "--all-groups",
                "--format",
                "requirements-txt",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except subprocess.CalledProcessError:
        pyproject.write_text(text)
        raise
    pins = sorted(
        {
            line.strip()
            for line in exported.splitlines()
            if "==" in line and not line.startswith("#")
        },
        key=str.lower,
    )
    block = (
        BEGIN
        + "\nconstraint-dependencies = [\n"
        + "".join(f'    "{p}",\n' for p in pins)
        + "]\n"
        + END
        + "\n"
    )
    anchor = "[tool.uv]\n"
    if anchor not in unpinned:
        print("pyproject.toml has no [tool.uv] table", file=sys.stderr)
        return 1
    pyproject.write_text(unpinned.replace(anchor, anchor + block, 1))
    print(f"pinned {len(pins)} packages in pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
