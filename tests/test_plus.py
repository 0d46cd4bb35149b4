"""The MedMNIST+ protocol: local pretrained weights through timm's overlay, the input
transform, the two probes, and the grid end to end with its embedding cache."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from medbench.cli import main
from medbench.data.synthetic import write_synthetic_like
from medbench.errors import MedbenchError
from medbench.models.embeddings import EmbeddingCache
from medbench.training.config import TrainConfig
from medbench.training.engine import train
from medbench.utils.runtime import resolve_runtime
from medbench.workflows.medmnist_plus import (
    BackboneSpec,
    PlusRecipe,
    PlusResults,
    fit_linear_probe,
    knn_scores,
    load_backbone,
    prepare_inputs,
    run_plus,
)

TINY = "resnet10t"


def _save_weights(path, seed: int = 0):
    torch.manual_seed(seed)
    model = timm.create_model(TINY, pretrained=False)
    save_file(model.state_dict(), str(path))
    return model.state_dict()


@pytest.mark.slow  # builds a timm model or trains for a second
def test_local_weights_file_loads_through_timm_and_records_its_hash(tmp_path):
    saved = _save_weights(tmp_path / "w.safetensors")
    backbone = load_backbone(f"timm:{TINY}", str(tmp_path / "w.safetensors"))
    loaded = backbone.model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    expected = hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    assert backbone.weights_sha256 == expected
    assert backbone.mean == tuple(timm.create_model(TINY).pretrained_cfg["mean"])


@pytest.mark.slow  # builds a timm model or trains for a second
def test_a_hugging_face_style_folder_loads_offline(tmp_path):
    (tmp_path / "hf").mkdir()
    saved = _save_weights(tmp_path / "hf" / "model.safetensors", seed=3)
    backbone = load_backbone(f"timm:{TINY}", str(tmp_path / "hf"))
    assert torch.equal(backbone.model.state_dict()["conv1.0.weight"], saved["conv1.0.weight"])


def test_missing_weights_are_a_user_error(tmp_path):
    with pytest.raises(MedbenchError, match="do not exist"):
        load_backbone(f"timm:{TINY}", str(tmp_path / "nothing.safetensors"))


def test_hub_weights_for_a_medbench_model_are_refused():
    with pytest.raises(MedbenchError, match="medbench run folder"):
        load_backbone("resnet18", "hub")


@pytest.mark.slow  # builds a timm model or trains for a second
def test_inputs_are_normalised_by_the_backbone_then_zero_padded(tmp_path):
    _save_weights(tmp_path / "w.safetensors")
    backbone = load_backbone(f"timm:{TINY}", str(tmp_path / "w.safetensors"))
    images = torch.full((2, 28, 28, 1), 255, dtype=torch.uint8)
    x = prepare_inputs(
        images, backbone, PlusRecipe(target_size=36), resolve_runtime("cpu", "fp32", False)
    )
    assert x.shape == (2, 3, 36, 36)
    assert torch.all(x[:, :, :4] == 0) and torch.all(x[:, :, -4:] == 0)  # the padding
    centre = (1.0 - torch.tensor(backbone.mean)) / torch.tensor(backbone.std)
    torch.testing.assert_close(x[0, :, 18, 18], centre)
    resized = prepare_inputs(images, backbone, PlusRecipe(target_size=36, input_mode="resize"),
                             resolve_runtime("cpu", "fp32", False))  # fmt: skip
    torch.testing.assert_close(resized[0, :, 0, 0], centre)


def test_knn_votes_by_euclidean_distance_unless_cosine_is_asked():
    # The query lies on the direction of class 1 but next to the class-0 point in distance.
    reference = np.array([[1.0, 0.1], [10.0, 10.0]], dtype=np.float32)
    labels = np.array([[0], [1]])
    query = np.array([[2.0, 2.0]], dtype=np.float32)
    euclid = knn_scores(reference, labels, query, "binary-class", 2, k=1)
    cosine = knn_scores(reference, labels, query, "binary-class", 2, k=1, metric="cosine")
    assert euclid.argmax(1).tolist() == [0] and cosine.argmax(1).tolist() == [1]


def test_knn_scores_are_neighbour_shares_per_label_for_multi_label():
    reference = np.array([[0.0], [1.0], [2.0], [10.0]], dtype=np.float32)
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    scores = knn_scores(reference, labels, np.array([[1.0]], dtype=np.float32),
                        "multi-label, binary-class", 2, k=3)  # fmt: skip
    np.testing.assert_allclose(scores, [[2 / 3, 2 / 3]])


@pytest.mark.slow  # builds a timm model or trains for a second
def test_linear_probe_keeps_the_lowest_validation_loss_and_stops_after_patience():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.int64)
    val_x = rng.normal(size=(50, 8)).astype(np.float32)
    val_y = rng.integers(0, 2, size=(50, 1))  # labels unrelated to x: validation soon worsens
    recipe = PlusRecipe(lr=0.05, epochs=300, patience=3)
    fit = fit_linear_probe(x, y, val_x, val_y, "binary-class", 2, recipe, seed=0)
    assert fit.epochs < 300 and fit.epochs - fit.best_epoch == 3
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(fit.layer(torch.from_numpy(val_x)),
                                                 torch.from_numpy(val_y).reshape(-1))  # fmt: skip
    assert float(loss) == pytest.approx(fit.best_val_loss, rel=1e-5)
    learnt = fit_linear_probe(x, y, x, y, "binary-class", 2, recipe, seed=0).layer
    with torch.no_grad():
        acc = (learnt(torch.from_numpy(x)).argmax(1).numpy() == y[:, 0]).mean()
    assert acc > 0.9


@pytest.mark.slow
def test_the_recipe_end_to_end_on_two_datasets_reuses_cached_embeddings(tmp_path):
    data = tmp_path / "data"
    for name in ("breastmnist", "pneumoniamnist"):
        write_synthetic_like(data, name, 28)
    weights = tmp_path / "w.safetensors"
    _save_weights(weights)
    events: list[tuple[str, str]] = []
    cache = EmbeddingCache(
        tmp_path / "cache", on_event=lambda k, key: events.append((k, key.dataset))
    )
    recipe = PlusRecipe(target_size=32, epochs=2, patience=2, lr=1e-3, embed_batch_size=64)
    spec = [BackboneSpec(f"timm:{TINY}", str(weights))]
    with pytest.warns(UserWarning):  # synthetic stand-ins are not the official files
        first = run_plus(["breastmnist"], [28], spec, tmp_path / "one", seeds=[0],
                         recipe=recipe, data_dir=str(data), cache=cache, device="cpu")  # fmt: skip
    assert {r.regime for r in first.rows} == {"end-to-end", "linear-probe", "knn"}
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    for row in first.rows:
        assert row.weights_sha256 == sha and row.weights_source == str(weights)
        assert set(row.metrics) == {"val", "test"}
        assert all(0 <= row.metrics[s]["acc"] <= 1 for s in row.metrics)
    e2e = json.loads(
        (tmp_path / "one" / "runs" / "breastmnist-28" / f"timm-{TINY}" / "seed0"
         / "results.json").read_text()
    )  # fmt: skip
    assert e2e["config"]["select_metric"] == "loss"  # MedMNIST+'s rule: lowest val loss
    losses = [h["val_loss"] for h in e2e["history"]]
    assert e2e["best_round"] == 1 + losses.index(min(losses))
    assert events == [("miss", "breastmnist")] * 3  # the two probes share one embedding pass

    events.clear()
    with pytest.warns(UserWarning):
        second = run_plus(["breastmnist", "pneumoniamnist"], [28], spec, tmp_path / "two",
                          regimes=["linear-probe", "knn"], seeds=[0], recipe=recipe,
                          data_dir=str(data), cache=cache, device="cpu")  # fmt: skip
    assert events == [("hit", "breastmnist")] * 3 + [("miss", "pneumoniamnist")] * 3
    assert [r.metrics for r in second.rows[:2]] == [r.metrics for r in first.rows[:2]]
    saved = PlusResults.from_json(json.loads((tmp_path / "two" / "plus.json").read_text()))
    assert saved.cache == {"hits": 3, "misses": 6} and len(saved.rows) == 4

    _save_weights(weights, seed=1)  # other weights under the same file name
    events.clear()
    with pytest.warns(UserWarning):
        run_plus(["breastmnist"], [28], spec, tmp_path / "three", regimes=["knn"], seeds=[0],
                 recipe=recipe, data_dir=str(data), cache=cache, device="cpu")  # fmt: skip
    assert events == [("miss", "breastmnist")] * 3


@pytest.mark.slow
def test_cli_probes_with_a_medbench_run_as_backbone(tmp_path, capsys):
    data = tmp_path / "data"
    write_synthetic_like(data, "breastmnist", 28)
    run = tmp_path / "run"
    config = TrainConfig(dataset="breastmnist", model="advanced_cnn", epochs=1, device="cpu",
                         data_dir=str(data), run_dir=str(run))  # fmt: skip
    with pytest.warns(UserWarning):
        train(config, progress=False, measure=False)
    probe = ["pretrained", "--datasets", "breastmnist", "--backbone", f"advanced_cnn={run}",
             "--regimes", "knn,linear-probe", "--seeds", "1", "--input", "none", "--epochs", "3",
             "--data-dir", str(data), "--out", str(tmp_path / "plus"), "--device", "cpu"]  # fmt: skip
    assert main(probe) == 0
    out = capsys.readouterr().out
    assert "linear-probe" in out and "knn" in out
    assert "embedding cache: 0 hits, 3 computed" in out
    probe[probe.index("--backbone") + 1] = "advanced_cnn"
    assert main(probe) == 2
    err = capsys.readouterr().err
    assert "MODEL=WEIGHTS" in err and "Traceback" not in err


def test_published_medmnist_plus_rows_cite_their_table_and_have_no_knn_auc():
    from medbench.report.published import load_published, medmnist_plus_citation, medmnist_plus_rows

    assert "Doerrich" in medmnist_plus_citation()
    block = load_published()["medmnist_plus"]
    for dataset in ("breastmnist", "pneumoniamnist"):
        rows = medmnist_plus_rows(dataset)
        assert block["datasets"][dataset]["table"].lower() == dataset
        assert {r["regime"] for r in rows} == {"end-to-end", "linear-probe", "knn"}
        assert {r["size"] for r in rows} == set(block["sizes"])
        for r in rows:
            assert 0 < r["acc"] <= 1 and ("auc" in r) == (r["regime"] != "knn")


@pytest.mark.slow  # builds timm models
def test_end_to_end_adapter_sees_the_inputs_the_probes_see(tmp_path):
    from medbench.models import build_model
    from medbench.training.inference import normalize, to_unit_float

    _save_weights(tmp_path / "w.safetensors")
    backbone = load_backbone(f"timm:{TINY}", str(tmp_path / "w.safetensors"))
    recipe = PlusRecipe(target_size=40)
    model = build_model(f"timm:{TINY}", 1, 2, 28, input_adapter="pad", input_size=40,
                        input_norm="backbone")  # fmt: skip
    runtime = resolve_runtime("cpu", "fp32", False)
    images = torch.randint(0, 256, (3, 28, 28, 1), dtype=torch.uint8)
    engine_view = model.adapt(normalize(to_unit_float(images, runtime)))
    torch.testing.assert_close(engine_view, prepare_inputs(images, backbone, recipe, runtime))
