"""`medbench predict` and `medbench.serving.predict`: inputs, conversion, outputs, bad input."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medbench.cli import main
from medbench.errors import MedbenchError, MedbenchWarning
from medbench.scoring import metrics
from medbench.serving.predict import predict
from medbench.training import checkpoint as ckpt
from support.models import BREAST_LABELS, save_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "model.pt")


def gray_images(n: int, size: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def write_pngs(folder: Path, images: np.ndarray, names: list[str]) -> list[Path]:
    paths = []
    for image, name in zip(images, names, strict=True):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def reference_probs(model_file: Path, images: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """What the model says for uint8 (N, H, W, C) images, straight through the engine."""
    from medbench.training.inference import load_trained_model, predict_logits
    from medbench.utils.runtime import resolve_runtime

    model, meta = load_trained_model(model_file)
    logits = predict_logits(model, torch.from_numpy(images), resolve_runtime("cpu", "fp32"))
    return metrics.probabilities_from_logits(logits, meta["task"], temperature)


# ----------------------------------------------------------------------------- inputs


def test_folder_is_searched_recursively_in_sorted_order(model_file, tmp_path):
    write_pngs(tmp_path, gray_images(3), ["b.png", "a.png", "sub/c.png"])
    (tmp_path / "notes.txt").write_text("not an image")
    result = predict(model_file, [tmp_path], device="cpu", precision="fp32")
    assert result.names == [str(tmp_path / n) for n in ("a.png", "b.png", "sub/c.png")]


@pytest.mark.slow
def test_file_probabilities_are_the_models_on_the_decoded_pixels(model_file, tmp_path):
    images = gray_images(4)
    paths = write_pngs(tmp_path, images, [f"{i}.png" for i in range(4)])
    result = predict(model_file, paths, device="cpu", precision="fp32")
    expected = reference_probs(model_file, images[..., None])
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)


@pytest.mark.slow
def test_batches_give_the_same_result_as_one_pass(model_file, tmp_path):
    paths = write_pngs(tmp_path, gray_images(5), [f"{i}.png" for i in range(5)])
    one = predict(model_file, paths, batch_size=256, device="cpu", precision="fp32")
    many = predict(model_file, paths, batch_size=2, workers=2, device="cpu", precision="fp32")
    np.testing.assert_allclose(many.probabilities, one.probabilities, atol=1e-6)
    assert many.names == one.names


@pytest.mark.slow
def test_npz_uses_test_images_by_default_and_split_when_given(model_file, tmp_path):
    val, test = gray_images(3, seed=1), gray_images(2, seed=2)
    path = tmp_path / "data.npz"
    np.savez(path, val_images=val, test_images=test)
    default = predict(model_file, [path], device="cpu", precision="fp32")
    chosen = predict(model_file, [path], split="val", device="cpu", precision="fp32")
    assert default.names == [f"{path}:test_images[{i}]" for i in range(2)]
    np.testing.assert_allclose(
        chosen.probabilities, reference_probs(model_file, val[..., None]), atol=1e-6
    )


def test_npz_with_a_plain_images_array_is_read(model_file, tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, images=gray_images(3)[..., None])
    assert len(predict(model_file, [path], device="cpu", precision="fp32")) == 3


@pytest.mark.slow
def test_rgb_images_of_another_size_are_converted_and_counted_once(model_file, tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "big.png")
    write_pngs(tmp_path, gray_images(2), ["ok1.png", "ok2.png"])
    with pytest.warns(MedbenchWarning, match=r"converted 1 of 3 images .*28x28 grayscale"):
        result = predict(model_file, [tmp_path], device="cpu", precision="fp32")
    expected_pixels = np.array(
        Image.fromarray(rgb).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    )
    np.testing.assert_allclose(
        result.probabilities[0], reference_probs(model_file, expected_pixels[None, ..., None])[0]
    )


@pytest.mark.slow
def test_gray_images_are_repeated_to_rgb_for_an_rgb_model(tmp_path):
    model_file = save_model(tmp_path / "rgb" / "model.pt", in_channels=3)
    gray = gray_images(1)
    write_pngs(tmp_path / "in", gray, ["g.png"])
    with pytest.warns(MedbenchWarning, match="converted 1 of 1"):
        result = predict(model_file, [tmp_path / "in"], device="cpu", precision="fp32")
    rgb = np.repeat(gray[..., None], 3, axis=3)
    np.testing.assert_allclose(result.probabilities, reference_probs(model_file, rgb), atol=1e-6)


def test_images_already_in_the_models_shape_raise_no_warning(model_file, tmp_path):
    write_pngs(tmp_path, gray_images(2), ["a.png", "b.png"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", MedbenchWarning)
        predict(model_file, [tmp_path], device="cpu", precision="fp32")


def test_any_object_with_meta_and_predict_proba_is_a_predictor(tmp_path):
    class Constant:  # e.g. an ensemble
        meta = {
            "image_size": 28,
            "in_channels": 1,
            "task": "binary-class",
            "label_names": BREAST_LABELS,
            "temperature": 1.0,
        }

        def predict_proba(self, images, *, calibrated=False):
            return np.tile([0.2, 0.8], (len(images), 1))

    write_pngs(tmp_path, gray_images(2), ["a.png", "b.png"])
    result = predict(Constant(), [tmp_path])
    assert result.predicted() == ["normal, benign"] * 2
    assert result.calibrated is None


# ----------------------------------------------------------------------------- outputs


@pytest.mark.slow
def test_calibrated_probabilities_use_the_fitted_temperature(model_file, tmp_path):
    images = gray_images(3)
    paths = write_pngs(tmp_path, images, [f"{i}.png" for i in range(3)])
    result = predict(model_file, paths, device="cpu", precision="fp32")
    expected = reference_probs(model_file, images[..., None], temperature=1.5)
    np.testing.assert_allclose(result.calibrated, expected, atol=1e-6)


@pytest.mark.slow
def test_no_calibrated_probabilities_without_a_fitted_temperature(tmp_path):
    model_file = save_model(tmp_path / "t1" / "model.pt", temperature=1.0)
    write_pngs(tmp_path / "in", gray_images(1), ["a.png"])
    csv_path = tmp_path / "out.csv"
    assert main(["predict", str(model_file), str(tmp_path / "in"), "--csv", str(csv_path)]) == 0
    header = next(csv.reader(csv_path.open()))
    assert header == ["file", "predicted", "probability", "p_malignant", "p_normal, benign"]


def test_cli_prints_a_table_of_file_class_and_probability(model_file, tmp_path, capsys):
    write_pngs(tmp_path, gray_images(2), ["a.png", "b.png"])
    assert main(["predict", str(model_file), str(tmp_path), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["file", "predicted"]
    assert len(lines) == 3 and lines[1].startswith(str(tmp_path / "a.png"))
    assert lines[1].split()[-1].replace(".", "").isdigit()


def test_cli_json_has_a_probability_per_class_and_calibrated_ones(model_file, tmp_path, capsys):
    write_pngs(tmp_path, gray_images(1), ["a.png"])
    assert main(["predict", str(model_file), str(tmp_path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    assert set(row["probabilities"]) == set(BREAST_LABELS)
    assert sum(row["calibrated_probabilities"].values()) == pytest.approx(1.0)
    assert row["predicted"] in BREAST_LABELS


@pytest.mark.slow
def test_cli_csv_rows_match_the_python_result(model_file, tmp_path):
    paths = write_pngs(tmp_path / "in", gray_images(3), ["a.png", "b.png", "c.png"])
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model_file), *map(str, paths), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    result = predict(model_file, paths)
    assert [r["file"] for r in rows] == result.names
    assert [float(r["p_malignant"]) for r in rows] == pytest.approx(
        result.probabilities[:, 0], abs=1e-6
    )
    assert "p_calibrated_malignant" in rows[0]


@pytest.mark.slow
def test_multilabel_prediction_names_every_label_above_one_half(tmp_path):
    names = ["a", "b", "c"]
    model_file = save_model(
        tmp_path / "ml" / "model.pt", num_classes=3, task=metrics.MULTI_LABEL, label_names=names
    )
    write_pngs(tmp_path / "in", gray_images(2), ["x.png", "y.png"])
    result = predict(model_file, [tmp_path / "in"])
    for probs, predicted in zip(result.probabilities, result.predicted(), strict=True):
        above = [n for n, p in zip(names, probs, strict=True) if p > 0.5]
        assert predicted == ("; ".join(above) or "(none)")


# ----------------------------------------------------------------------------- bad input


def run_cli_error(capsys, *argv: str) -> str:
    assert main(["predict", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("medbench: error:")
    return err


def test_missing_input_path_is_a_clear_error(model_file, tmp_path, capsys):
    assert "does not exist" in run_cli_error(capsys, str(model_file), str(tmp_path / "nope.png"))


def test_empty_folder_is_a_clear_error(model_file, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "no PNG or JPEG" in run_cli_error(capsys, str(model_file), str(tmp_path / "empty"))


def test_non_image_file_is_a_clear_error(model_file, tmp_path, capsys):
    (tmp_path / "table.csv").write_text("a,b\n")
    assert "not a PNG/JPEG" in run_cli_error(capsys, str(model_file), str(tmp_path / "table.csv"))


@pytest.mark.slow
def test_text_file_named_png_is_a_clear_error(model_file, tmp_path, capsys):
    (tmp_path / "fake.png").write_text("hello")
    assert "cannot read" in run_cli_error(capsys, str(model_file), str(tmp_path / "fake.png"))


@pytest.mark.parametrize("suffix, fmt", [(".png", "PNG"), (".jpg", "JPEG")])
def test_truncated_image_is_a_clear_error(model_file, tmp_path, capsys, suffix, fmt):
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(gray_images(1, size=64)[0]).save(path, format=fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "cannot read" in run_cli_error(capsys, str(model_file), str(path))


def test_npz_without_images_is_a_clear_error(model_file, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", labels=np.zeros(3))
    assert "no 'test_images'" in run_cli_error(capsys, str(model_file), str(tmp_path / "x.npz"))


@pytest.mark.slow
def test_missing_model_is_a_clear_error(tmp_path, capsys):
    write_pngs(tmp_path, gray_images(1), ["a.png"])
    run_cli_error(capsys, str(tmp_path / "no-run"), str(tmp_path / "a.png"))


def test_plain_state_dict_is_not_a_medbench_model(tmp_path, capsys):
    from medbench.models import build_model

    torch.save(build_model("efficientnet", 1, 2).state_dict(), tmp_path / "weights.pt")
    write_pngs(tmp_path, gray_images(1), ["a.png"])
    err = run_cli_error(capsys, str(tmp_path / "weights.pt"), str(tmp_path / "a.png"))
    assert "not written by medbench" in err


def test_random_file_as_model_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(np.random.default_rng(0).bytes(500))
    write_pngs(tmp_path, gray_images(1), ["a.png"])
    run_cli_error(capsys, str(tmp_path / "model.pt"), str(tmp_path / "a.png"))


@pytest.mark.parametrize("version, words", [(99, "newer medbench"), (0, "older")])
def test_other_format_versions_are_refused(tmp_path, capsys, version, words):
    model_file = save_model(tmp_path / "model.pt", format_version=version)
    write_pngs(tmp_path, gray_images(1), ["a.png"])
    assert words in run_cli_error(capsys, str(model_file), str(tmp_path / "a.png"))


def test_unfinished_run_checkpoint_is_a_clear_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(
        {"format": ckpt.CHECKPOINT_FORMAT, "format_version": ckpt.FORMAT_VERSION, "step": 3},
        run_dir / "checkpoint.pt",
    )
    write_pngs(tmp_path, gray_images(1), ["a.png"])
    assert "unfinished run" in run_cli_error(capsys, str(run_dir), str(tmp_path / "a.png"))


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    torch.save(
        {"format": ckpt.MODEL_FORMAT, "format_version": 1, "x": _RunsCodeWhenUnpickled(marker)},
        tmp_path / "evil.pt",
    )
    write_pngs(tmp_path, gray_images(1), ["a.png"])
    err = run_cli_error(capsys, str(tmp_path / "evil.pt"), str(tmp_path / "a.png"))
    assert "execute code" in err
    assert not marker.exists()


def test_bad_batch_size_is_a_medbench_error(model_file, tmp_path):
    write_pngs(tmp_path, gray_images(1), ["a.png"])
    with pytest.raises(MedbenchError, match="batch-size"):
        predict(model_file, [tmp_path], batch_size=0)


# ----------------------------------------------------------------------------- bit depth


@pytest.mark.slow
def test_a_16_bit_png_gives_the_prediction_of_the_same_image_at_8_bits(model_file, tmp_path):
    images = gray_images(3, seed=4)
    eight = write_pngs(tmp_path / "8", images, ["a.png", "b.png", "c.png"])
    sixteen = tmp_path / "16"
    sixteen.mkdir()
    for image, name in zip(images, ["a.png", "b.png", "c.png"], strict=True):
        Image.fromarray(image.astype(np.uint16) * 257).save(sixteen / name)  # same image
    assert Image.open(sixteen / "a.png").mode.startswith("I")
    at_8 = predict(model_file, [str(p) for p in eight])
    with pytest.warns(MedbenchWarning, match=r"read 3 16-bit images as 8-bit .*255/65535"):
        at_16 = predict(model_file, [str(sixteen)])
    np.testing.assert_allclose(at_16.probabilities, at_8.probabilities, atol=1e-6)


def test_16_bit_images_that_use_only_12_bits_are_named_as_coming_out_dark(model_file, tmp_path):
    image = np.random.default_rng(1).integers(0, 4096, (28, 28)).astype(np.uint16)
    Image.fromarray(image).save(tmp_path / "ct.png")
    with pytest.warns(MedbenchWarning, match=r"1 of them never exceed 4095 .*dark"):
        predict(model_file, [str(tmp_path / "ct.png")])
