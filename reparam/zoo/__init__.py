"""Model zoo: the papers' architectures, built by name.

``list_models()``, ``create_model(name, **kwargs)`` and ``model_info(name)``; every model takes
``num_classes``, ``in_chans`` and ``width`` (a channel multiplier, 1.0 = paper size; channel counts
are rounded to multiples of 8, at least 8, and group counts are clamped to divide them).
"""

from reparam.zoo import expanded, repvgg, resnet, scalenet, sknet  # noqa: F401  (registers the models)
from reparam.zoo.registry import ModelEntry, create_model, list_models, model_info, register_model

__all__ = ["ModelEntry", "create_model", "list_models", "model_info", "register_model"]
