"""The Dockerfile and the scripts that build and smoke-test the images. The
images themselves are built and started by hand (deploy/docker/images.py,
figures in bench/RESULTS.md); these tests check what can be checked without a
Docker engine."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(relative: str) -> ModuleType:
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_dockerfile_takes_its_base_as_a_build_argument() -> None:
    text = (ROOT / "Dockerfile").read_text()
    # No `# syntax=` line: that fetches a frontend image from Docker Hub.
    assert not re.search(r"^#\s*syntax=", text, re.M)
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS base$", text, re.M)
    # Every pip run goes through install_deps.py, which reads the build secrets.
    runs = [line for line in text.splitlines() if re.search(r"\bpip3? install\b", line)]
    assert runs == [], runs


def test_the_build_script_builds_every_target_of_the_dockerfile(
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = load("deploy/docker/images.py")
    stages = re.findall(r"^FROM \S+ AS (\w+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert set(stages) - {"base"} == set(images.TARGETS)
    argv = ["build", "--base-image", "deb:1", "--network", "host", "--secret", "id=ca,src=/c"]
    assert images.main([*argv, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(images.TARGETS)
    for target, line in zip(images.TARGETS, lines, strict=True):
        assert f"--target {target} -t imagesearch-{target}:latest" in line
        assert "--build-arg BASE_IMAGE=deb:1" in line
        assert "--network host" in line and "--secret id=ca,src=/c" in line
        assert line.endswith(str(ROOT))


def test_pip_reads_the_build_secrets_only_when_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deps = load("deploy/install_deps.py")
    monkeypatch.delenv("PIP_CERT", raising=False)
    monkeypatch.delenv("PIP_CONFIG_FILE", raising=False)
    assert "PIP_CERT" not in deps.pip_env(tmp_path)  # no secrets: pip as it is
    (tmp_path / "ca").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "pipconf").write_text("")  # an empty secret counts as none
    env = deps.pip_env(tmp_path)
    assert env["PIP_CERT"] == str(tmp_path / "ca")
    assert "PIP_CONFIG_FILE" not in env
    monkeypatch.setenv("PIP_CERT", "/mine.pem")  # the caller's own setting wins
    assert deps.pip_env(tmp_path)["PIP_CERT"] == "/mine.pem"


def test_only_the_embedder_image_and_a_dev_install_get_the_no_deps_packages() -> None:
    """The bundled weights, the sentence encoder and the class names are the
    embedder's: the index, gateway and web images do without ~100 MB of them,
    and each RUN of the Dockerfile asks as its image needs."""
    deps = load("deploy/install_deps.py")
    assert deps.wants_no_deps(["embedder"]) and deps.wants_no_deps(["--no-deps-only"])
    assert not any(deps.wants_no_deps(a) for a in (["index"], [], ["web"]))
    runs = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if "install_deps.py" in line
    ]
    extras = [
        line.split("install_deps.py", 1)[1].split() for line in runs if "--project" not in line
    ]
    assert [x for x in extras if x] and sum(deps.wants_no_deps(x) for x in extras) == 1


def test_the_debian_base_script_is_valid_shell() -> None:
    script = ROOT / "deploy/docker/debian-base.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    assert "python3-venv" in script.read_text()  # the Dockerfile makes a venv
