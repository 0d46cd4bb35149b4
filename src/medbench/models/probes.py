"""Probes of a frozen backbone: its embeddings of a split, and k-nearest-neighbour class
probabilities over them.

`embed` runs a backbone over a split batch by batch, in eval mode and without gradients,
and keeps its pre-logits features `forward_head(forward_features(x), pre_logits=True)`
(timm's split of `forward`, which every model of the zoo has). `knn_probabilities` is the
share of each class among the k nearest references (multi-label: one vote per label, over
the same neighbours): scikit-learn's `KNeighborsClassifier.predict_proba` with uniform
weights. `medbench.workflows.transfer`
(cosine) and `medbench.workflows.medmnist_plus` (Euclidean, as MedMNIST+'s code, or
cosine) use both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from medbench.errors import MedbenchError
from medbench.models.adapters import FeatureModel

KNN_METRICS = ("euclidean", "cosine")


@torch.no_grad()
def embed(
    model: nn.Module,
    images: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 256,
    autocast: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
    l2_normalize: bool = False,
) -> np.ndarray:
    """Pre-logits embeddings of `images`, float32 (N, D), `batch_size` images at a time.

    `prepare` turns a slice of `images` into the model's input (on the model's device);
    `autocast` gives the context the forward pass runs in; `l2_normalize` scales every
    embedding to unit length (on the device, before the copy to the host)."""
    model.eval()
    split = cast(FeatureModel, model)  # every model build_model or timm makes has the split
    out = []
    for start in range(0, len(images), batch_size):
        x = prepare(images[start : start + batch_size])
        with autocast():
            features = split.forward_head(split.forward_features(x), pre_logits=True)
        features = features.float().flatten(1)
        if l2_normalize:
            features = F.normalize(features, dim=1)
        out.append(features.cpu())
    return torch.cat(out).numpy()


def knn_probabilities(
    reference: np.ndarray,
    reference_labels: np.ndarray,
    queries: np.ndarray,
    task: str,
    n_classes: int,
    k: int,
    metric: str = "euclidean",
) -> np.ndarray:
    """The share of each class (multi-label: of references with each label) among the k
    nearest references by `metric` ("euclidean" or "cosine"), float64 (n_queries,
    n_classes; multi-label: one column per label): scikit-learn's
    `KNeighborsClassifier(k, metric).predict_proba` with uniform weights, multi-label as
    multi-output (one vote per label over the same neighbours). All references vote when
    there are fewer than k; a class no reference has gets zeros. Its argmax (multi-label:
    share > 0.5) is the majority vote. References tied at the k-th place are chosen as
    scikit-learn's brute-force search orders them."""
    if metric not in KNN_METRICS:
        raise MedbenchError(f"k-NN metric must be one of {', '.join(KNN_METRICS)}, not {metric!r}")
    k = min(k, len(reference))
    labels = reference_labels.astype(np.int64)
    if labels.ndim == 2 and labels.shape[1] == 1:  # one column: scikit-learn wants it flat
        labels = labels.reshape(-1)
    knn = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute")
    knn.fit(reference, labels)
    proba = knn.predict_proba(queries)
    if not task.startswith("multi-label"):
        out = np.zeros((len(queries), n_classes))
        out[:, knn.classes_] = proba
        return out
    if not knn.outputs_2d_:  # one label: one array of shares, not a list of them
        proba, classes = [proba], [knn.classes_]
    else:
        classes = knn.classes_
    shares = [_share_of(1, p, c) for p, c in zip(proba, classes, strict=True)]
    return np.stack(shares, axis=1)


def _share_of(label: int, proba: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The column of `label` in one output's `predict_proba`; zeros if no reference has it."""
    where = np.flatnonzero(classes == label)
    return proba[:, where[0]] if len(where) else np.zeros(len(proba))
