"""Components from config nodes: `hydra.utils.instantiate` with run-time values, and one-line errors.

Every config-group option is a `_target_` node; values only known at run time (the number of classes, the input
shape, the score table) are passed here, and only those the target accepts, so a user's own class needs no
parameter it does not use.
"""

from __future__ import annotations

import inspect
import logging
from importlib import resources
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from lossbench.errors import LossbenchError, one_line, require

CONFIG_MODULE = "lossbench.configs"


def group_options(group: str) -> list[str]:
    """The options of a config group, read from the group's folder (so error messages list what exists)."""
    folder = resources.files(CONFIG_MODULE).joinpath(*group.split("/"))
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def target_of(node: DictConfig, what: str) -> Any:
    """The class or function named by node._target_, with a one-line error when it cannot be imported."""
    require(
        not OmegaConf.is_missing(node, "_target_"), f"{what}._target_ is not set (e.g. {what}._target_=mypkg.MyClass)"
    )
    path = str(node._target_)
    quiet = logging.getLogger("hydra.utils")  # get_object logs its failure over three lines before raising it
    disabled, quiet.disabled = quiet.disabled, True
    try:
        return get_object(path)
    except Exception as err:  # ImportError, AttributeError, or hydra's wrapper of them
        cause = err.__cause__ or err
        raise LossbenchError(f"{what}._target_={path}: cannot import it ({one_line(cause)})") from None
    finally:
        quiet.disabled = disabled


def accepted(target: Any, runtime: dict[str, Any]) -> dict[str, Any]:
    """The run-time values the target's signature accepts (all of them when it takes **kwargs)."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # some builtins have no signature: pass everything
        return runtime
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return runtime
    return {k: v for k, v in runtime.items() if k in parameters}


def build(node: DictConfig, what: str, *args: Any, drop: tuple[str, ...] = (), **runtime: Any) -> Any:
    """instantiate(node, *args, **runtime) without the keys in `drop` (labels such as a loss's `name`),
    passing only the run-time values the target accepts. Any failure is one LossbenchError naming `what`."""
    target = target_of(node, what)
    missing = [k for k in node if k not in drop and OmegaConf.is_missing(node, k)]
    label = f"{what}={node.name}" if "name" in node and not OmegaConf.is_missing(node, "name") else what
    require(not missing, f"{label} needs {what}.{missing[0]}=VALUE" if missing else "")
    config = OmegaConf.masked_copy(node, [k for k in node if k not in drop]) if drop else node
    try:
        # _convert_="all": targets get plain lists and dicts, not OmegaConf containers.
        return instantiate(config, *args, _convert_="all", **accepted(target, runtime))
    except InstantiationException as err:
        raise LossbenchError(f"{what} ({node._target_}): {one_line(err.__cause__ or err)}") from None
    except Exception as err:  # e.g. a missing mandatory value (???) or a bad value the target rejects
        raise LossbenchError(f"{what} ({node._target_}): {one_line(err)}") from None
