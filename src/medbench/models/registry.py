"""The model registry: name -> builder, timm-style.

A builder is a function `builder(in_channels, num_classes, image_size=28, **options)`
decorated with `@register_model`; its keyword-only parameters are the options a user may
set. `build_model` also accepts `timm:<name>` for any model of timm's own registry.
Models registered with `volumetric=True` take (B, C, D, H, W) volumes, the others (and
timm's) (B, C, H, W) images; `check_spatial_dims` refuses a model for data of the other kind.
A user's own model (`file.py:fn`, `package.module:fn` or an installed plugin of the group
`medbench.models`, see `medbench.models.user`) goes wherever a name goes; registered names
win over a plugin of the same name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import timm
from torch import nn

from medbench.errors import MedbenchError
from medbench.models import user
from medbench.models.adapters import AdapterSpec

TIMM_PREFIX = "timm:"
IMAGE_SIZES = (28, 64, 128, 224)

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_VOLUMETRIC: set[str] = set()


def register_model(
    fn: Callable[..., nn.Module], *, volumetric: bool = False
) -> Callable[..., nn.Module]:
    """Register a builder under its function name (decorator); `volumetric`: it builds a
    model for 3D volumes."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    if volumetric:
        _VOLUMETRIC.add(fn.__name__)
    return fn


def model_spatial_dims(name: str) -> int:
    """3 for a model of 3D volumes, 2 for one of 2D images (every timm model)."""
    if name.startswith(TIMM_PREFIX):
        return 2
    if name not in _MODELS and user.is_user_model(name):
        return user.resolve(name).spatial_dims  # the builder's `spatial_dims`, 2 by default
    _builder(name)  # an unknown name is a user error
    return 3 if name in _VOLUMETRIC else 2


def check_spatial_dims(name: str, spatial_dims: int, dataset: str) -> None:
    """Raise MedbenchError if model `name` is not for `dataset`'s kind of sample (2D images,
    `spatial_dims` 2, or 3D volumes, 3)."""
    dims = model_spatial_dims(name)
    if dims != spatial_dims:
        kind = {2: "2D images", 3: "3D volumes"}
        raise MedbenchError(
            f"model {name} is for {kind[dims]} but {dataset} holds {kind[spatial_dims]}; "
            f"choose a {spatial_dims}D model (see 'medbench models')"
        )


def list_models(spatial_dims: int | None = 2) -> list[str]:
    """Names of the registered medbench models and installed plugins for 2D images (the
    default), for 3D volumes (`spatial_dims=3`) or all (None); `timm:<name>` and
    `file.py:fn` / `module:fn` are accepted in addition."""
    names = set(_MODELS) | set(user.plugin_names())
    return sorted(n for n in names if spatial_dims in (None, model_spatial_dims(n)))


def model_source(name: str, recorded: str | None = None) -> tuple[str, str | None]:
    """(the name as a run records it, its builder's source hash): a file model's path made
    absolute and its file's hash; (name, None) for medbench's own and timm models. A
    `recorded` hash that differs from the current one is refused (one line)."""
    if name.startswith(TIMM_PREFIX) or name in _MODELS or not user.is_user_model(name):
        return name, None
    name = user.normalise(name)
    user.check_source(name, recorded)
    return name, user.resolve(name).source_hash


def check_model_source(name: str, recorded: str | None) -> None:
    """Refuse weights saved with a model whose source file has changed since."""
    if recorded is not None and name not in _MODELS and not name.startswith(TIMM_PREFIX):
        user.check_source(name, recorded)


def model_label(name: str) -> str:
    """The short name of a model for folders and tables (`dir/my_net.py:build` ->
    `my_net:build`); other names as they are."""
    return name if name.startswith(TIMM_PREFIX) else user.model_label(name)


def model_options(name: str) -> dict[str, object]:
    """The options a registered (or user) model takes, with their defaults."""
    if name not in _MODELS and user.is_user_model(name):
        return user.resolve(name).options()
    builder = _builder(name)
    return {
        p.name: p.default
        for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def build_model(
    name: str, in_channels: int, num_classes: int, image_size: int = 28, **options: object
) -> nn.Module:
    """Build model `name` for images of `in_channels` x `image_size` x `image_size`.

    Options left unset keep the model's defaults. The model has `forward_features`,
    `forward_head` and `num_features`; it knows nothing of devices or precision.
    """
    if in_channels < 1 or num_classes < 1:
        raise MedbenchError(
            f"a model needs at least 1 input channel and 1 class, not {in_channels} and {num_classes}"
        )
    if image_size not in IMAGE_SIZES:
        raise MedbenchError(
            f"image size must be one of {', '.join(map(str, IMAGE_SIZES))}, not {image_size}"
        )
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name[len(TIMM_PREFIX) :], in_channels, num_classes, image_size, options)
    if name not in _MODELS and user.is_user_model(name):
        return user.build(user.resolve(name), in_channels, num_classes, image_size, options)
    user.check_options(name, options, model_options(name))
    try:
        return _MODELS[name](in_channels, num_classes, image_size, **options)
    except (ValueError, TypeError) as exc:
        raise MedbenchError(f"bad option for model {name}: {exc}") from None


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise MedbenchError(
            f"unknown model {name!r}; choose one of {', '.join(list_models(None))} "
            f"or any timm model as {TIMM_PREFIX}<name> (e.g. {TIMM_PREFIX}resnet10t), "
            "or your own as path/to/file.py:function"
        )
    return _MODELS[name]


# medbench's common option names -> the names timm's models use for the same thing.
_TIMM_OPTION_NAMES = {"drop_path": "drop_path_rate", "dropout": "drop_rate"}


def _build_timm(
    name: str, in_channels: int, num_classes: int, image_size: int, options: dict[str, object]
) -> nn.Module:
    # Input adapter options (input_adapter / input_size / input_channels): resize small
    # MedMNIST images and match channels to what a pretrained backbone expects.
    options = dict(options)
    spec = AdapterSpec.pop_from(options)
    if spec is not None:
        in_channels_outer, in_channels = in_channels, spec.backbone_channels(in_channels)
        image_size = spec.backbone_size(image_size)
    if not timm.is_model(name):
        raise MedbenchError(
            f"timm has no model {name!r}; list them with python -c "
            f"\"import timm; print(timm.list_models('{name.split('_')[0]}*'))\""
        )
    # The options are the user's, of any type: timm checks them (TypeError, ValueError below).
    kwargs: dict[str, Any] = {_TIMM_OPTION_NAMES.get(k, k): v for k, v in options.items()}
    create = dict(pretrained=False, in_chans=in_channels, num_classes=num_classes, **kwargs)
    try:
        # Transformers fix their input size at construction; convolutional nets refuse the
        # argument, so it is only passed to models that take it.
        try:
            model = timm.create_model(name, img_size=image_size, **create)
        except TypeError:
            model = timm.create_model(name, **create)
    except (TypeError, ValueError, AssertionError) as exc:
        raise MedbenchError(
            f"cannot build timm model {name} with options {options}: {exc}"
        ) from None
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise MedbenchError(f"timm model {name} has no forward_features/forward_head; pick another")
    return spec.wrap(model, in_channels_outer) if spec is not None else model
