"""Selectors from their config nodes (configs/selector/<name>.yaml), with hydra.utils.instantiate.

A selector node holds `_target_` (the selector class, e.g. goracs.selection.goracs.GoracsSelector), `name` (run
folders, tables, logger names), `budget` (read by the pipeline: an argument of `select`, not of the constructor)
and the constructor's settings. There is no registry: the class path in the node is the only link from a config
to its class, so this module imports no selector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from goracs.selection.base import SelectionError, Selector

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"  # the repository's configs/ (goracs.__main__.CONFIG_DIR)
PIPELINE_KEYS = ("name", "budget")  # keys of a selector node that are not constructor settings


def selector_settings(selector_cfg: DictConfig | Mapping[str, Any]) -> tuple[str | None, Any, dict[str, Any]]:
    """(name, budget, constructor settings) of a selector node, interpolations resolved. The settings leave out
    `_target_` too: they are what the selection cache is keyed by, the same as before selectors had a `_target_`."""
    node = dict(OmegaConf.to_container(selector_cfg, resolve=True) if isinstance(selector_cfg, DictConfig)
                else selector_cfg)
    name, budget = node.pop("name", None), node.pop("budget", None)
    node.pop("_target_", None)
    return name, budget, node


def _target(selector_cfg: DictConfig | Mapping[str, Any], name: Any) -> str:
    target = selector_cfg.get("_target_")
    if not target or not isinstance(target, str):
        raise SelectionError(f"selector '{name}' has no _target_: the selector class, e.g. "
                             "_target_: goracs.selection.goracs.GoracsSelector")
    return target


def _instantiate(target: str, settings: dict[str, Any]) -> Selector:
    """hydra.utils.instantiate of `target` with the settings; the selector's own error (TypeError for a setting it
    does not take, ValueError / SelectionError for a bad value) is raised as it is, not wrapped by Hydra."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001  (Hydra wraps the import error)
        raise SelectionError(f"selector _target_ {target!r} cannot be imported: {e}") from e
    if not issubclass(cls, Selector):
        raise SelectionError(f"selector _target_ {target!r} is not a goracs.selection.base.Selector")
    try:
        return instantiate({"_target_": target, **settings}, _convert_="all")
    except InstantiationException as e:
        if isinstance(e.__cause__, (TypeError, ValueError)):
            raise e.__cause__ from None
        raise


def build_selector(selector_cfg: DictConfig | Mapping[str, Any]) -> tuple[str | None, Any, Selector]:
    """(name, budget, selector) from a selector node: `name` and `budget` are dropped and the rest instantiated.
    The budget is returned as configured (the pipeline and goracs/validate.py check it)."""
    name, budget, settings = selector_settings(selector_cfg)
    sel = _instantiate(_target(selector_cfg, name), settings)
    if name and name != sel.name:  # a variant of a class under its own name (goracs_lam0): its reports carry it
        sel.name = str(name)
    return name, budget, sel


def make_selector(name: str, **params: Any) -> Selector:
    """The selector of configs/selector/<name>.yaml (its `_target_` class) with the given settings, outside a Hydra
    run (e.g. on one's own data); settings not given take the class defaults, not the task-dependent values of the
    file (those interpolate the task config)."""
    node = _selector_file(name)
    sel = _instantiate(_target(node, name), params)
    if node.get("name") and node.get("name") != sel.name:
        sel.name = str(node.get("name"))
    return sel


def _selector_file(name: str):
    """configs/selector/<name>.yaml with the files it extends (its `defaults` list, in order, `_self_` last unless
    placed), as Hydra composes it."""
    path = CONFIG_DIR / "selector" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "selector").glob("*.yaml"))
        raise SelectionError(f"unknown selector '{name}'; known: {known}")
    node = OmegaConf.load(path)
    defaults = list(node.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    out = OmegaConf.create()
    for d in defaults:
        out = OmegaConf.merge(out, node if d == "_self_" else _selector_file(str(d)))
    return out
