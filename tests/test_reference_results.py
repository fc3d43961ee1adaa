"""scripts/reference_results.sh: every part it can run is described in its header and named when a part is unknown
(the parts themselves need the real data and hours of CPU; docs/results.md reports them)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reference_results.sh"


def parts() -> list[str]:
    """The part names of the script's case statement."""
    return re.findall(r"^    ([a-z0-9_]+)\)", SCRIPT.read_text(), re.MULTILINE)


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_every_part_is_described_in_the_header():
    header = SCRIPT.read_text().split("set -euo pipefail")[0]
    described = set(re.findall(r"^#   ([a-z0-9_, ]+?)\s{2,}", header, re.MULTILINE))
    names = {name.strip() for line in described for name in line.split(",")}
    assert len(parts()) >= 10 and set(parts()) <= names, set(parts()) - names


def test_an_unknown_part_names_every_part_and_runs_nothing(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "nope"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "unknown part 'nope'" in result.stderr
    listed = re.findall(r"[a-z0-9_]+", result.stderr.split("(", 1)[1])
    assert sorted(listed) == sorted(parts())
    assert not (SCRIPT.parents[1] / "results" / "nope").exists()
