"""Both kinds of install find the Hydra config tree (top-level configs/, shipped as the package lossbench.configs):
the editable dev install maps it to the repository's configs/, and a wheel installed into a fresh environment
runs `lossbench run` from another directory with the configs it carries. Offline: the wheel is built without
build isolation and installed without an index; the fresh environment borrows the dependencies already
installed (a .pth line), so nothing is downloaded or reinstalled."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import lossbench.configs
import pytest
from conftest import HANG_S, TINY

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "src", "configs"]  # what a wheel is built from


def test_the_editable_install_finds_the_configs_at_the_top_of_the_repository():
    assert Path(lossbench.configs.__file__).parent == REPO / "configs"
    assert (REPO / "configs" / "config.yaml").is_file()


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=HANG_S, env=env)
    assert result.returncode == 0, (command, result.stdout, result.stderr)
    return result


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the sources (pip builds in the tree it is given: the checkout stays clean)."""
    tree = tmp_path / "tree"
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(source, tree / name)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        tmp_path / "wheels",
        tree,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "wheels").glob("lossbench-*.whl")
    return wheel


def fresh_environment(tmp_path: Path, wheel: Path) -> Path:
    """A new venv holding only the wheel, its dependencies borrowed from where this suite found them."""
    import hydra
    import pandas
    import torch
    import typer

    venv = tmp_path / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    site = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path).stdout.strip()
    )
    borrowed = dict.fromkeys(str(Path(m.__file__).parents[1]) for m in (torch, hydra, typer, pandas))
    (site / "borrowed_dependencies.pth").write_text("\n".join(borrowed) + "\n")
    return venv


@pytest.mark.slow
def test_a_wheel_in_a_fresh_environment_runs_from_another_directory_with_its_own_configs(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"lossbench/configs/{p.relative_to(REPO / 'configs').as_posix()}" for p in (REPO / "configs").rglob("*.yaml")
    }
    assert configs and configs <= names, sorted(configs - names)
    plugins = {
        f"hydra_plugins/{p.relative_to(REPO / 'src' / 'hydra_plugins').as_posix()}"
        for p in (REPO / "src" / "hydra_plugins").rglob("*.py")
    }
    assert "hydra_plugins/lossbench_launcher/packed_launcher.py" in plugins and plugins <= names
    modules = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "lossbench").rglob("*.py")}
    assert modules <= names, sorted(modules - names)  # every subpackage listed in pyproject's packages

    venv = fresh_environment(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run(
        venv / "bin" / "python", "-c", "import lossbench.configs as c; print(c.__file__)", cwd=elsewhere, env=env
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not the checkout's
    result = run(
        venv / "bin" / "lossbench", "run", *TINY, "train.epochs=1", "hydra.run.dir=run", cwd=elsewhere, env=env
    )
    assert (elsewhere / "run" / "metrics.csv").read_text().count("\n") == 2, result.stderr  # header, epoch 1
    assert not (elsewhere / "configs").exists()
