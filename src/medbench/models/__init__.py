"""The model zoo: a registry of builders (`build_model`) and size/cost helpers.

    >>> from medbench.models import build_model, list_models
    >>> model = build_model("advanced_cnn", in_channels=3, num_classes=7, image_size=28)

Every model has `forward_features(x)` (a `(B, num_features, h, w)` map),
`forward_head(features, pre_logits=False)` (pool, then classify) and `num_features`, and
holds no device, precision or checkpoint logic. The `*_3d`, `*_acs` and `*_2.5d` models
take (B, C, D, H, W) volumes (`model_spatial_dims`). `timm:<name>` builds
any timm model; `path/to/file.py:fn`, `package.module:fn` and installed plugins of the
entry-point group `medbench.models` build a user's own (docs/own-model.md). See
docs/models.md for the architectures.
"""

# The family modules register their builders on import.
from medbench.models import advanced_cnn, efficientnet, resnet, volumetric  # noqa: F401
from medbench.models.registry import (
    TIMM_PREFIX,
    build_model,
    check_model_source,
    check_spatial_dims,
    list_models,
    model_label,
    model_options,
    model_source,
    model_spatial_dims,
    register_model,
)
from medbench.models.summary import count_flops, count_parameters, model_summary
from medbench.models.user import ENTRY_POINT_GROUP, PlainModel

__all__ = [
    "ENTRY_POINT_GROUP",
    "TIMM_PREFIX",
    "PlainModel",
    "build_model",
    "check_model_source",
    "check_spatial_dims",
    "count_flops",
    "count_parameters",
    "list_models",
    "model_label",
    "model_options",
    "model_source",
    "model_spatial_dims",
    "model_summary",
    "register_model",
]
