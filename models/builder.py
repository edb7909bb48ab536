"""The model registry: `build_model(cfg.model)` builds any registered model from its config."""
from omegaconf import DictConfig, OmegaConf


class Registry:
    """Maps a config `type` name to a class; `build(cfg)` calls it with the remaining keys."""

    def __init__(self, name: str):
        self.name = name
        self._classes = {}

    def register_module(self, cls=None, *, name=None):
        def register(c):
            key = name or c.__name__
            if key in self._classes:
                raise KeyError(f'{key} is already registered in the {self.name} registry')
            self._classes[key] = c
            return c

        return register(cls) if cls is not None else register

    def __contains__(self, key):
        return key in self._classes

    def __getitem__(self, key):
        if key not in self._classes:
            raise KeyError(f"unknown {self.name} type '{key}' (registered: {', '.join(sorted(self._classes))})")
        return self._classes[key]

    def keys(self):
        return self._classes.keys()

    def build(self, cfg):
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg = dict(cfg)
        if 'type' not in cfg:
            raise KeyError(f'{self.name} config has no `type`: {sorted(cfg)}')
        return self[cfg.pop('type')](**cfg)


MODELS = Registry('model')


def build_model(cfg):
    """cfg: the `model` section of a config (DictConfig or dict) -> nn.Module."""
    return MODELS.build(cfg)
