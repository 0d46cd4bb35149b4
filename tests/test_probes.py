"""The probes of a frozen backbone (medbench.models.probes): embeddings of a split and k-NN
class shares, compared with the code the transfer and MedMNIST+ workflows had before
(copied here as references) and with scikit-learn's own neighbour search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from medbench.models import build_model
from medbench.models.probes import embed, knn_probabilities
from medbench.training.inference import normalize, to_unit_float
from medbench.utils.runtime import Runtime, resolve_runtime
from medbench.workflows import medmnist_plus, transfer

TASKS = {"binary-class": 2, "multi-class": 5, "multi-label, binary-class": 4}
KS = (1, 3, 11, 500)  # 500: more than there are references, so all of them vote


# ----------------------------------------------------------------------------- references


def transfer_knn_before(
    reference: np.ndarray, reference_labels: np.ndarray, queries: np.ndarray, task: str, k: int
) -> np.ndarray:
    """medbench.workflows.transfer.knn_probabilities as it was."""
    k = min(k, len(reference))
    ref = torch.from_numpy(reference)
    if task.startswith("multi-label"):
        onehot = torch.from_numpy(reference_labels.astype(np.float32))
    else:
        y = torch.from_numpy(reference_labels.reshape(-1).astype(np.int64))
        onehot = torch.nn.functional.one_hot(y, int(y.max()) + 1).float()
    out = []
    for start in range(0, len(queries), 1024):
        sims = torch.from_numpy(queries[start : start + 1024]) @ ref.T
        idx = sims.topk(k, dim=1).indices
        out.append(onehot[idx].mean(1))
    return torch.cat(out).numpy()


def plus_knn_before(
    reference: np.ndarray,
    reference_labels: np.ndarray,
    queries: np.ndarray,
    task: str,
    n_classes: int,
    k: int = 11,
    metric: str = "euclidean",
) -> np.ndarray:
    """medbench.workflows.medmnist_plus.knn_scores as it was."""
    k = min(k, len(reference))
    ref = torch.from_numpy(reference).double()
    if metric == "cosine":
        ref = F.normalize(ref, dim=1)
    if task.startswith("multi-label"):
        votes = torch.from_numpy(reference_labels.astype(np.float64))
    else:
        y = torch.from_numpy(reference_labels.reshape(-1).astype(np.int64))
        votes = F.one_hot(y, n_classes).double()
    out = []
    for start in range(0, len(queries), 1024):
        q = torch.from_numpy(queries[start : start + 1024]).double()
        if metric == "cosine":
            idx = (F.normalize(q, dim=1) @ ref.T).topk(k, dim=1).indices
        else:
            idx = torch.cdist(q, ref).topk(k, dim=1, largest=False).indices
        out.append(votes[idx].mean(1))
    return torch.cat(out).numpy()


@torch.no_grad()
def transfer_embed_before(
    model: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int = 256
) -> np.ndarray:
    """medbench.workflows.transfer.embed as it was."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(to_unit_float(images[start : start + batch_size], runtime))
        with runtime.autocast():
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        out.append(torch.nn.functional.normalize(f.float().flatten(1), dim=1).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def plus_embed_before(
    backbone: medmnist_plus.Backbone,
    images: torch.Tensor,
    recipe: medmnist_plus.PlusRecipe,
    runtime: Runtime,
) -> np.ndarray:
    """medbench.workflows.medmnist_plus.embed_images as it was."""
    model = backbone.model.to(runtime.device).eval()
    out = []
    for start in range(0, len(images), recipe.embed_batch_size):
        x = medmnist_plus.prepare_inputs(
            images[start : start + recipe.embed_batch_size], backbone, recipe, runtime
        )
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        out.append(features.float().flatten(1).cpu())
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- data


def _labels(rng: np.random.Generator, task: str, n: int) -> np.ndarray:
    n_classes = TASKS[task]
    if task.startswith("multi-label"):
        return rng.integers(0, 2, size=(n, n_classes))
    return rng.integers(0, n_classes, size=(n, 1))


def _random(seed: int, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian embeddings: no two distances tie."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(120, 16)).astype(np.float32)
    return reference, _labels(rng, task, 300), queries


def _tied(seed: int, task: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings on a coarse integer grid, with duplicated references: many references at
    exactly the same distance, and ties at the k-th place between different labels."""
    rng = np.random.default_rng(seed)
    grid = rng.choice([-2.0, -1.0, 1.0, 2.0], size=(n // 2, 4)).astype(np.float32)
    reference = np.concatenate([grid, grid[rng.permutation(len(grid))]])
    queries = rng.choice([-2.0, -1.0, 1.0, 2.0], size=(80, 4)).astype(np.float32)
    return reference, _labels(rng, task, len(reference)), queries


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- the k-NN vote


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", KS)
def test_medmnist_plus_scores_equal_the_previous_code(task, metric, k):
    reference, labels, queries = _random(0, task)
    new = medmnist_plus.knn_scores(reference, labels, queries, task, TASKS[task], k, metric)
    old = plus_knn_before(reference, labels, queries, task, TASKS[task], k, metric)
    assert new.dtype == old.dtype == np.float64
    np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("k", KS)
def test_transfer_probabilities_equal_the_previous_code(task, k):
    reference, labels, queries = _random(1, task)
    reference, queries = _unit(reference), _unit(queries)
    new = transfer.knn_probabilities(reference, labels, queries, task, k)
    old = transfer_knn_before(reference, labels, queries, task, k)
    assert new.dtype == old.dtype == np.float32
    np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 3, 11])
def test_without_ties_the_vote_is_scikit_learns_own(task, metric, k):
    """An independent check: scikit-learn's classifier with its own neighbour search."""
    reference, labels, queries = _random(3, task)
    y = labels if task.startswith("multi-label") else labels.reshape(-1)
    knn = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute").fit(
        reference.astype(np.float64), y
    )
    proba = knn.predict_proba(queries.astype(np.float64))
    expected = np.stack([p[:, 1] for p in proba], axis=1) if y.ndim == 2 else proba
    new = knn_probabilities(
        reference.astype(np.float64),
        labels,
        queries.astype(np.float64),
        task,
        TASKS[task],
        k,
        metric,
    )
    np.testing.assert_allclose(new, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [4, 40, 300, 2000])
def test_tied_votes_count_k_of_the_nearest_references(n):
    """Whichever tied references count (scikit-learn's choice; the previous code's could
    differ), the vote is that of some k nearest references: the ones strictly nearer than
    the k-th distance, and the rest from those at it."""
    reference, labels, queries = _tied(5, "multi-class", n)
    k, y = min(11, n), labels.reshape(-1)
    shares = knn_probabilities(reference, labels, queries, "multi-class", 5, k)
    distance = np.linalg.norm(queries[:, None] - reference[None], axis=-1)
    kth = np.sort(distance, axis=1)[:, k - 1 : k]
    for row in range(len(queries)):
        inside = np.bincount(y[distance[row] < kth[row]], minlength=5)
        at_kth = np.bincount(y[distance[row] == kth[row]], minlength=5)
        counts = np.rint(shares[row] * k).astype(int)
        assert counts.sum() == k and np.all(inside <= counts) and np.all(counts <= inside + at_kth)


def test_a_class_no_reference_has_gets_zero_and_labels_vote_alone():
    reference = np.array([[0.0], [1.0], [2.0]])
    query = np.array([[1.6]])  # nearest: the references at 2 and at 1
    scores = knn_probabilities(reference, np.array([[0], [2], [2]]), query, "multi-class", 4, 2)
    np.testing.assert_array_equal(scores, [[0.0, 0.0, 1.0, 0.0]])
    labels = np.array([[0, 1, 1], [0, 1, 0], [0, 1, 1]])  # label 0 never, label 1 always
    scores = knn_probabilities(reference, labels, query, "multi-label, binary-class", 3, 2)
    np.testing.assert_array_equal(scores, [[0.0, 1.0, 0.5]])
    one_label = knn_probabilities(
        reference, labels[:, 2:], query, "multi-label, binary-class", 1, 2
    )
    np.testing.assert_array_equal(one_label, [[0.5]])


# ----------------------------------------------------------------------------- embeddings


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", 1, 2, 28).train()  # train mode: embed must switch it


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (10, 28, 28, 1), generator=torch.Generator().manual_seed(0)).to(
        torch.uint8
    )


def test_transfer_embeddings_equal_the_previous_code(model, images):
    runtime = resolve_runtime("cpu", "fp32", False)
    old = transfer_embed_before(model.train(), images, runtime, batch_size=4)
    new = transfer.embed(model.train(), images, runtime, batch_size=4)
    np.testing.assert_array_equal(new, old)
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, rtol=1e-6)


def test_medmnist_plus_embeddings_equal_the_previous_code(model, images):
    runtime = resolve_runtime("cpu", "fp32", False)
    backbone = medmnist_plus.Backbone("resnet18", model, 1, (0.5,), (0.25,), "w", "w", "0" * 64)
    recipe = medmnist_plus.PlusRecipe(target_size=32, embed_batch_size=3)
    model.train()
    old = plus_embed_before(backbone, images, recipe, runtime)
    model.train()
    new = medmnist_plus.embed_images(backbone, images, recipe, runtime)
    np.testing.assert_array_equal(new, old)


def test_embeddings_are_taken_in_eval_mode_without_gradients_batch_by_batch(model, images):
    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return batch.movedim(-1, 1).float() / 255

    whole = embed(model.train(), images, prepare, batch_size=len(images))
    assert not model.training
    one_by_one = embed(model.train(), images, prepare, batch_size=1)
    np.testing.assert_allclose(one_by_one, whole, rtol=1e-5, atol=1e-6)
    assert whole.dtype == np.float32 and whole.shape[0] == len(images)
