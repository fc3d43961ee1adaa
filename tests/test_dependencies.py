"""Dependencies as they are used: every package that src/, scripts/ or tests/ import is declared in pyproject.toml
(core or an extra), each with a lower bound this environment meets, and `pip check` finds nothing broken."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
OWN = {"lossbench", "hydra_plugins.lossbench_launcher", "conftest"}  # this repository's modules
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][^,;\s]*)")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, str]:
    """Every requirement of pyproject.toml (core and extras): normalised name -> its lower bound."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    bounds = {}
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        assert match, f"{requirement}: no lower bound (NAME>=VERSION)"
        bounds[normalized(match[1])] = match[2]
    return bounds


def imported_modules() -> dict[str, set[str]]:
    """Module -> the files importing it (imports, and pytest.importorskip of a name), other than the standard
    library's and this repository's own. hydra_plugins is a namespace of several packages: its plugin's name."""
    found: dict[str, set[str]] = {}
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "scripts").rglob("*.py"), *(REPO / "tests").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "importorskip"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                parts = name.split(".")
                module = ".".join(parts[:2]) if parts[0] == "hydra_plugins" else parts[0]
                if (
                    module not in sys.stdlib_module_names
                    and module not in OWN
                    and not (REPO / "tests" / f"{module}.py").exists()
                ):
                    found.setdefault(module, set()).add(str(path.relative_to(REPO)))
    return found


def distributions(module: str) -> set[str]:
    """The distributions that install `module` (mlflow's package comes in mlflow and mlflow-skinny)."""
    if module.startswith("hydra_plugins."):
        return {normalized(module.split(".")[1])}  # hydra_plugins.hydra_joblib_launcher: hydra-joblib-launcher
    return {normalized(name) for name in metadata.packages_distributions()[module]}


def test_every_imported_package_is_declared():
    bounds = declared()
    missing = {
        module: sorted(files)
        for module, files in imported_modules().items()
        if not distributions(module) & bounds.keys()
    }
    assert not missing, f"imported but not in pyproject.toml: {missing}"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def test_the_environment_meets_every_lower_bound():
    """The bounds are versions the suite passed on: the environment running it has them (or newer)."""
    below = {}
    for name, bound in declared().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment lacks: its tests skip
        if version_tuple(installed) < version_tuple(bound):
            below[name] = f"{installed} < {bound}"
    assert not below, below


def test_pip_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
