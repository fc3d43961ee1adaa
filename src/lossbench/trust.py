"""What a config read back from disk may make lossbench call.

A run directory's `config.yaml` and a comparison's `compare.json` travel: results folders are shared, downloaded
and committed. Building a config calls every `_target_` in it (Hydra instantiates nested ones too), and some
Hydra settings run commands or load configs of their own. So a config read from disk (`resume`, `report`,
`rescore`) may name only lossbench's own components, the `_target_`s its shipped config groups and the installed
Hydra plugins' configs name, and anything else only when the user names it again on this invocation's command
line (`--trust mypkg.MyNet`). The check runs before anything is built or launched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from lossbench.errors import LossbenchError

CONFIG_MODULE = "lossbench.configs"
TARGET = "_target_"
# Hydra settings that run code or commands other than through a `_target_`: configs from another folder, the
# job's environment (LD_PRELOAD, PYTHONPATH for its subprocesses), submitit's shell lines and Python command.
# Python's logging config (hydra/job_logging) imports and calls the classes it names.
CODE_KEYS = (
    "hydra.searchpath",
    "hydra.job.env_set",
    "hydra.job.env_copy",
    "hydra.launcher.setup",
    "hydra.launcher.python",
    "hydra.launcher.srun_args",
    "hydra.launcher.additional_parameters",
    "hydra.callbacks",
    "hydra.job_logging",
    "hydra.hydra_logging",
)


def _yaml_targets(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == TARGET and isinstance(item, str) and item != "???":
                yield item
            else:
                yield from _yaml_targets(item)
    elif isinstance(value, list):
        for item in value:
            yield from _yaml_targets(item)


@lru_cache(maxsize=1)
def own_targets() -> frozenset[str]:
    """Every `_target_` that lossbench's shipped config groups name (read from the package's yaml files)."""
    found: set[str] = set()
    folders = [resources.files(CONFIG_MODULE)]
    while folders:
        for entry in folders.pop().iterdir():
            if entry.is_dir():
                folders.append(entry)
            elif entry.name.endswith(".yaml"):
                found.update(_yaml_targets(yaml.safe_load(entry.read_text(encoding="utf-8"))))
    return frozenset(found)


def targets(node: Any, prefix: str = "") -> dict[str, str]:
    """Every `_target_` below `node` (a config, or plain dicts and lists), by its dotted key, unresolved (an
    interpolated target is reported as written)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    found: dict[str, str] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{prefix}{key}"
            if key == TARGET:
                found[where] = str(value)
            else:
                found.update(targets(value, where + "."))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.update(targets(value, f"{prefix}{index}."))
    return found


def untrusted(found: dict[str, str], trusted: Iterable[str], also_own: Iterable[str] = ()) -> dict[str, str]:
    """The entries of `found` (key -> target) that are neither lossbench's own, nor in `also_own`, nor
    `trusted` (by target or by key)."""
    allowed = own_targets() | set(also_own) | set(trusted)
    return {key: value for key, value in found.items() if value not in allowed and key not in set(trusted)}


def refusal(source: str, key: str, value: str, command: str) -> LossbenchError:
    return LossbenchError(
        f"{source} names {key}={value}, which is not one of lossbench's own components; a config read from disk "
        f"is built only with what you name again: `{command} --trust {value}` (only if you trust it)"
    )


def check_config(cfg: Any, source: str, trusted: Iterable[str], command: str, also_own: Iterable[str] = ()) -> None:
    """Refuse, before anything is built, a config read from `source` whose `_target_`s are not lossbench's own,
    in `also_own` (those of a config already checked) or `trusted` (named on the command line)."""
    bad = untrusted(targets(cfg), trusted, also_own)
    if bad:
        key, value = next(iter(bad.items()))
        raise refusal(source, key, value, command)


def is_code_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in CODE_KEYS)
