"""The models, by their ``--model`` names: the one place that maps a name to its model object
(``modelkit.Model``). Everything else asks the object: ``get_model(config.model)`` for a run being
trained, ``model_of_saved(config_dict)`` for a run's saved config.

Adding a model: write its module (a ``Model`` subclass: networks, optimizers, step, presets,
checks, loss names, sample rows, directions) and add it to ``_MODELS`` below; docs/architecture.md
walks through it with pix2pix.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cyclegan.cut_model import CUT_MODEL, FASTCUT_MODEL
from cyclegan.cyclegan_model import CycleGAN
from cyclegan.errors import CycleGANError
from cyclegan.modelkit import Model
from cyclegan.pix2pix_model import Pix2Pix

__all__ = ["MODELS", "DEFAULT_MODEL", "get_model", "model_of_saved", "build_networks"]

_MODELS: dict[str, Model] = {model.name: model for model in (CycleGAN(), CUT_MODEL, FASTCUT_MODEL, Pix2Pix())}
MODELS: tuple[str, ...] = tuple(_MODELS)  # the --model choices
DEFAULT_MODEL = "cyclegan"


def get_model(name: str) -> Model:
    """The model called ``name``; a CycleGANError listing the others for an unknown one."""
    model = _MODELS.get(name)
    if model is None:
        raise CycleGANError(f"--model {name}: use one of {', '.join(MODELS)}")
    return model


def model_of_saved(config: Any) -> Model:
    """The model of a run's saved config (``config.json``, a checkpoint's); a config from before
    ``--model`` existed is CycleGAN's."""
    name = config.get("model", DEFAULT_MODEL) if isinstance(config, dict) else DEFAULT_MODEL
    return get_model(str(name))


def build_networks(config: Any) -> dict[str, nn.Module]:
    """The networks of the config's ``--model``, initialised as the config says (by default
    N(0, 0.02), as the reference), in the order of the model's ``network_names`` (the order the
    random initialisation draws in)."""
    return get_model(config.model).build_networks(config)
