"""Baseline coreset selectors (method.md 7). Each is built from its Hydra config, configs/selector/<name>.yaml,
whose `_target_` names the class (goracs.selection.build.build_selector); nothing is registered on import."""
