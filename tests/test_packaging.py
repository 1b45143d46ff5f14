"""Packaging stays consistent: conda env == pyproject, CI treats "no tests" as failure, CPU torch goes in first."""

import importlib
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENV = yaml.safe_load((ROOT / "environment.yml").read_text())


def _key(req: Requirement) -> tuple:
    return canonicalize_name(req.name), frozenset(req.extras), SpecifierSet(str(req.specifier)), str(req.marker or "")


def _pip_entries() -> list[str]:
    blocks = [d["pip"] for d in ENV["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(blocks) == 1, "environment.yml needs exactly one pip: block"
    return blocks[0]


def test_environment_pip_list_matches_pyproject():
    want = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    want += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]]
    got = [Requirement(r) for r in _pip_entries()]
    assert len({canonicalize_name(r.name) for r in got}) == len(got), "duplicate package in environment.yml"
    by_name = {canonicalize_name(r.name): _key(r) for r in got}
    missing = sorted({canonicalize_name(r.name) for r in want} - set(by_name))
    extra = sorted(set(by_name) - {canonicalize_name(r.name) for r in want})
    assert not missing and not extra, f"environment.yml lacks {missing}, has unknown {extra}"
    for r in want:
        assert by_name[canonicalize_name(r.name)] == _key(r), f"{r} differs in environment.yml"


def test_environment_pins_torch_first():
    assert canonicalize_name(Requirement(_pip_entries()[0]).name) == "torch"


def test_environment_python_satisfies_requires_python():
    pythons = [d for d in ENV["dependencies"] if isinstance(d, str) and d.split("=")[0].split(">")[0] == "python"]
    assert len(pythons) == 1, pythons
    version = pythons[0].split("=", 1)[1].lstrip("=")  # conda "python=3.11" means 3.11.*
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert Version(f"{version}.0") in requires and Version(f"{version}.99") in requires


@pytest.fixture
def ci_copy(tmp_path):
    """A copy of .ci/run in a fake checkout, and a fake ``make`` that records its args and exits with $FAKE_RC."""
    (tmp_path / "repo" / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", tmp_path / "repo" / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "make"
    fake.write_text('#!/usr/bin/env bash\necho "$PWD $*" >> "$MAKE_LOG"\nexit "$FAKE_RC"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return tmp_path


@pytest.mark.parametrize("make_rc, want_rc", [(0, 0), (1, 1), (2, 2), (5, 1)])
def test_ci_runs_make_test_and_fails_on_no_tests(ci_copy, make_rc, want_rc):
    log = ci_copy / "make.log"
    env = {**os.environ, "PATH": f"{ci_copy / 'bin'}:{os.environ['PATH']}", "FAKE_RC": str(make_rc),
           "MAKE_LOG": str(log)}
    res = subprocess.run(["bash", str(ci_copy / "repo" / ".ci" / "run")], env=env, capture_output=True, text=True,
                         cwd=ci_copy)
    assert res.returncode == want_rc, res.stderr
    assert log.read_text().split() == [str(ci_copy / "repo"), "test"]  # from the checkout root
    if make_rc == 5:
        assert "no tests" in res.stderr


def _dry_run(target: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.fail("make is needed to check the Makefile (the README's two commands use it)")
    res = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), target], capture_output=True, text=True, check=True)
    return [line for line in res.stdout.splitlines() if line.strip() and not line.startswith("make")]


def test_makefile_installs_pinned_cpu_torch_before_the_package():
    lines = _dry_run("venv")
    torch_at = [i for i, line in enumerate(lines) if "pip install" in line and "torch==2.13.0" in line]
    pkg_at = [i for i, line in enumerate(lines) if "pip install" in line and "-e" in line.split()]
    assert torch_at and pkg_at, lines
    assert torch_at[0] < pkg_at[0]
    assert '".[dev]"' in lines[pkg_at[0]] or ".[dev]" in lines[pkg_at[0]]


def test_make_test_runs_pytest():
    assert any("-m pytest" in line for line in _dry_run("test"))


def test_every_package_is_listed_in_pyproject():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "src").parts) for p in (ROOT / "src").rglob("__init__.py")}
    found.add("orderlab.schedules")
    assert found == listed, f"pyproject packages differ from the tree: missing {found - listed}, stale {listed - found}"


@pytest.mark.parametrize("class_path, new_module", [
    ("orderlab.callbacks.SampleGrids", "orderlab.train.callbacks"),
    ("orderlab.module.OrderModule", "orderlab.train.module"),
])
def test_old_class_paths_still_resolve_and_warn(class_path, new_module, monkeypatch):
    """Old YAMLs and saved run configs name the modules that moved into orderlab.train."""
    old_module, _, name = class_path.rpartition(".")
    monkeypatch.delitem(sys.modules, old_module, raising=False)  # the warning comes on the first import
    with pytest.warns(DeprecationWarning, match=new_module.replace(".", r"\.")):
        cls = getattr(importlib.import_module(old_module), name)
    assert cls is getattr(importlib.import_module(new_module), name)
