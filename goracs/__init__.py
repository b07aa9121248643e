"""goracs: optimal-transport coreset selection for fine-tuning LLM-based recommenders (GORACS, KDD 2025)."""

__version__ = "0.1.0"


def _register_resolvers() -> None:
    """Config resolvers used by the YAML files (registered once, on import of the package)."""
    from omegaconf import OmegaConf

    def sub_path(folder, name):
        # `folder/name`, or null when the folder is null (e.g. the paper profile's adapters.dir=null: fresh LoRA)
        return None if folder in (None, "", "null") else f"{str(folder).rstrip('/')}/{name}"

    if not OmegaConf.has_resolver("goracs.sub_path"):
        OmegaConf.register_new_resolver("goracs.sub_path", sub_path)


_register_resolvers()
