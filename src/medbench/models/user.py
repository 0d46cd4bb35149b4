"""Your own model: a builder function in a `.py` file, an importable module or an installed
plugin, used wherever a model name goes.

    --model path/to/my_net.py:build      a file (recognised by its .py)
    --model my_package.nets:build        a module on the Python path
    --model my_net                       an entry point of the group `medbench.models`

The builder is called like a registered one, `build(in_channels, num_classes,
image_size=28, **options)`; its keyword-only parameters are the options a user may set. It
returns an `nn.Module` giving `(B, num_classes)` logits; a probe batch of zeros checks that
before any training. Without `forward_features` / `forward_head` the network is wrapped in
`PlainModel` (the whole network is the feature stage, the head is the identity). A builder
attribute `spatial_dims = 3` says the model takes (B, C, D, H, W) volumes (2 by default).

The SHA-256 of the source file (the named file; for a module or a plugin, the file that
defines the builder) is part of a run's identity and is saved with its weights, so an edited
file is never taken for the model it was. Every failure is one MedbenchError line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from medbench.errors import MedbenchError

ENTRY_POINT_GROUP = "medbench.models"
RESERVED_PREFIX = "timm:"
HASH_CHARS = 12

# Files already executed, by (path, content hash): an unchanged file is loaded once, an
# edited one again under a new module name.
_FILE_MODULES: dict[tuple[str, str], ModuleType] = {}


@dataclass(frozen=True)
class UserModel:
    """A resolved user model: its recorded name, display label, builder and source hash."""

    name: str  # as configs record it: absolute path for a file model
    label: str  # short, for folders and tables: my_net:build
    builder: Callable[..., nn.Module]
    source_file: str
    source_hash: str

    @property
    def spatial_dims(self) -> int:
        dims = getattr(self.builder, "spatial_dims", 2)
        if dims not in (2, 3):
            raise MedbenchError(
                f"model {self.label}: the builder's spatial_dims must be 2 or 3, not {dims!r}"
            )
        return dims

    def options(self) -> dict[str, object]:
        """The builder's keyword-only parameters with their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.builder).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }


def is_spec(name: str) -> bool:
    """Whether `name` is written as `file.py:fn` or `package.module:fn`."""
    return ":" in name and not name.startswith(RESERVED_PREFIX)


def is_file_spec(name: str) -> bool:
    return is_spec(name) and name.rpartition(":")[0].endswith(".py")


def plugin_names() -> list[str]:
    """Names of the installed plugins (entry points of the group `medbench.models`)."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)})


def is_user_model(name: str) -> bool:
    return is_spec(name) or name in plugin_names()


def normalise(name: str) -> str:
    """A file model's path made absolute (a run must rebuild it from anywhere); other names
    unchanged."""
    if not is_file_spec(name):
        return name
    path, _, fn = name.rpartition(":")
    return f"{os.path.abspath(os.path.expanduser(path))}:{fn}"


def model_label(name: str) -> str:
    """The short name for folders and tables: `dir/my_net.py:build` -> `my_net:build`."""
    if is_file_spec(name):
        path, _, fn = name.rpartition(":")
        return f"{Path(path).stem}:{fn}"
    return name


def file_hash(path: str | os.PathLike) -> str:
    """The first characters of the SHA-256 of a file's bytes."""
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:HASH_CHARS]


def resolve(name: str) -> UserModel:
    """The user model `name` names (file, module or plugin), imported and checked."""
    if is_file_spec(name):
        return _from_file(normalise(name))
    if is_spec(name):
        return _from_module(name)
    return _from_plugin(name)


def check_source(name: str, recorded: str | None) -> None:
    """Refuse a run whose model's source changed since it was recorded (`recorded`: the
    hash saved with the run; None for medbench's own and timm models)."""
    if recorded is None:
        return
    try:
        user = resolve(name)
    except MedbenchError as exc:  # moved, deleted, no longer importable
        raise MedbenchError(
            f"{exc} (the run's model {model_label(name)} is rebuilt from its source: "
            "restore it or train again)"
        ) from None
    if user.source_hash != recorded:
        raise MedbenchError(
            f"model {user.label} changed since this run was made: {user.source_file} "
            f"hashes to {user.source_hash}, the run recorded {recorded}; "
            "restore that version of the file or train again"
        )


def check_options(label: str, options: dict, valid: dict) -> None:
    """Refuse, in one line naming the valid ones, options model `label` does not take."""
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise MedbenchError(
            f"model {label} has no option {', '.join(unknown)}; "
            f"its options are: {', '.join(valid) or 'none'}"
        )


def build(
    user: UserModel, in_channels: int, num_classes: int, image_size: int, options: dict
) -> nn.Module:
    """Call the builder, then check what it returned on a probe batch."""
    check_options(user.label, options, user.options())
    try:
        model = user.builder(in_channels, num_classes, image_size, **options)
    except MedbenchError:
        raise
    except Exception as exc:  # a user's code may raise anything: one line, not a traceback
        raise MedbenchError(f"the builder of model {user.label} raised {_describe(exc)}") from None
    if not isinstance(model, nn.Module):
        raise MedbenchError(
            f"the builder of model {user.label} returned a {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        model = PlainModel(model, num_classes)
    _probe(model, user, (in_channels, *(image_size,) * user.spatial_dims), num_classes)
    return model


class PlainModel(nn.Module):
    """A network without `forward_features` / `forward_head`: the whole network is the
    feature stage and the head is the identity, so `num_features` is the class count.
    Weights are saved under `net.`."""

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.num_features = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _probe(model: nn.Module, user: UserModel, sample: tuple[int, ...], num_classes: int) -> None:
    # Zeros, in eval mode, without gradients: the probe draws no random numbers and leaves
    # BatchNorm statistics as they were, so a seeded run is the same with or without it.
    x = torch.zeros(2, *sample)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise MedbenchError(
            f"model {user.label} fails on a probe batch of shape {tuple(x.shape)}: {_describe(exc)}"
        ) from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise MedbenchError(
            f"model {user.label} returns {shape} for a probe batch of shape {tuple(x.shape)}; "
            f"it must return (batch, {num_classes}) logits"
        )


def _from_file(name: str) -> UserModel:
    path, _, fn = name.rpartition(":")
    if not fn.isidentifier():
        raise MedbenchError(f"model {name!r}: name the builder function after the colon")
    try:
        digest = file_hash(path)
    except FileNotFoundError:
        raise MedbenchError(f"model file {path} does not exist") from None
    except OSError as exc:
        raise MedbenchError(f"model file {path} cannot be read: {exc.strerror}") from None
    module = _FILE_MODULES.get((path, digest)) or _exec_file(path, digest)
    builder = _builder_of(module, fn, path)
    return UserModel(name, model_label(name), builder, path, digest)


def _exec_file(path: str, digest: str) -> ModuleType:
    module_name = f"_medbench_user_{Path(path).stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise MedbenchError(f"model file {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look a module up by name
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise MedbenchError(
            f"model file {path}, line {exc.lineno}: syntax error: {exc.msg}"
        ) from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise MedbenchError(f"importing model file {path} raised {_describe(exc)}") from None
    _FILE_MODULES[(path, digest)] = module
    return module


def _from_module(name: str) -> UserModel:
    module_name, _, fn = name.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise MedbenchError(
            f"model {name}: no module {exc.name!r} (install its package or add its folder "
            "to PYTHONPATH; a file is written path/to/file.py:function)"
        ) from None
    except SyntaxError as exc:
        raise MedbenchError(
            f"model module {module_name} ({exc.filename}), line {exc.lineno}: syntax error: "
            f"{exc.msg}"
        ) from None
    except Exception as exc:
        raise MedbenchError(
            f"importing model module {module_name} raised {_describe(exc)}"
        ) from None
    return _with_source(name, name, _builder_of(module, fn, module_name))


def _from_plugin(name: str) -> UserModel:
    found = [
        ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name
    ]
    if not found:
        raise MedbenchError(f"unknown model {name!r} (no plugin of group {ENTRY_POINT_GROUP})")
    try:
        builder = found[0].load()
    except SyntaxError as exc:
        raise MedbenchError(
            f"plugin model {name} ({exc.filename}), line {exc.lineno}: syntax error: {exc.msg}"
        ) from None
    except Exception as exc:
        raise MedbenchError(
            f"plugin model {name} ({found[0].value}) failed to load: {_describe(exc)}"
        ) from None
    if not callable(builder):
        raise MedbenchError(f"plugin model {name} ({found[0].value}) is not a function")
    return _with_source(name, name, builder)


def _with_source(name: str, label: str, builder: Callable[..., nn.Module]) -> UserModel:
    try:
        source = inspect.getsourcefile(builder)
    except TypeError:
        source = None
    if source is None or not os.path.exists(source):
        raise MedbenchError(
            f"model {name}: the source file of its builder cannot be found, so its version "
            "cannot be recorded; give it as path/to/file.py:function"
        )
    return UserModel(name, label, builder, source, file_hash(source))


def _builder_of(module: ModuleType, fn: str, where: str) -> Callable[..., nn.Module]:
    builder = getattr(module, fn, None)
    if builder is None or not callable(builder):
        defined = sorted(
            name
            for name, value in vars(module).items()
            if inspect.isfunction(value)
            and value.__module__ == module.__name__
            and not name.startswith("_")
        )
        raise MedbenchError(
            f"{where} has no function {fn!r}; it defines: {', '.join(defined) or 'no function'}"
        )
    return builder


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
