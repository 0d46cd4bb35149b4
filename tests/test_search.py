"""`medbench search`: architecture spaces, the Pareto front, exported architectures."""

from __future__ import annotations

import json

import matplotlib
import matplotlib.image
import optuna
import pytest
from optuna.trial import create_trial

from medbench.errors import MedbenchError
from medbench.models import build_model, model_options
from medbench.training.config import TrainConfig, load_config_file
from medbench.workflows.nas import SPACES, export_architecture, search
from medbench.workflows.study_plots import plot_front


@pytest.mark.parametrize("family", sorted(SPACES))
def test_every_sampled_architecture_is_a_valid_model_of_the_family(family):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        options = SPACES[family](study.ask())
        assert set(options) <= set(model_options(family))
        build_model(family, 1, 2, 28, **options)


def test_a_family_without_a_space_is_refused(tmp_path):
    config = TrainConfig(dataset="breastmnist", model="resnet18")
    with pytest.raises(MedbenchError, match="searchable families"):
        search(config, tmp_path, 1, progress=False)


@pytest.mark.slow
def test_tiny_search_saves_the_front_and_exports_a_trainable_architecture(tmp_path):
    from medbench.data.synthetic import write_synthetic_like

    write_synthetic_like(tmp_path / "data", "breastmnist", 28, n_train=32, n_val=16, n_test=16)
    base = TrainConfig(
        dataset="breastmnist",
        model="advanced_cnn",
        epochs=1,
        batch_size=16,
        device="cpu",
        data_dir=str(tmp_path / "data"),
    )
    result = search(base, tmp_path / "out", 2, population_size=2, progress=False)
    front = json.loads((tmp_path / "out" / "pareto.json").read_text())["front"]
    assert front and front == result.front
    sizes = [row["n_params"] for row in front]
    scores = [row["val_auc"] for row in front]
    assert sizes == sorted(sizes) and scores == sorted(scores)  # bigger only if better
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 0
    assert (tmp_path / "out" / "pareto.csv").read_text().startswith("trial,val_auc,n_params")

    path = tmp_path / "arch.json"
    export_architecture(
        f"sqlite:///{tmp_path / 'out' / 'search.sqlite'}",
        result.study_name,
        front[0]["trial"],
        path,
    )
    values = load_config_file(path)
    assert values == {"model": "advanced_cnn", "model_options": front[0]["model_options"]}
    config = TrainConfig.from_dict({**values, "dataset": "breastmnist"})
    build_model(config.model, 1, 2, 28, **config.model_options)


def _search_study(storage: str, name: str) -> None:
    """A finished one-trial search study, made without training."""
    study = optuna.create_study(
        study_name=name, storage=storage, directions=["maximize", "minimize"]
    )
    study.set_user_attr("model", "advanced_cnn")
    trial = study.ask()
    trial.set_user_attr("model_options", {"width": 0.5})
    study.tell(trial, [0.9, 1000.0])


@pytest.mark.slow
def test_exporting_without_a_study_name_takes_the_storage_s_only_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'search.sqlite'}"
    _search_study(storage, "only")
    arch = export_architecture(storage, None, 0, tmp_path / "arch.json")
    assert arch == {"model": "advanced_cnn", "model_options": {"width": 0.5}}


@pytest.mark.slow
def test_exporting_without_a_study_name_from_a_storage_of_several_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'search.sqlite'}"
    _search_study(storage, "a")
    _search_study(storage, "b")
    with pytest.raises(MedbenchError, match="pick one with --study"):
        export_architecture(storage, None, 0, tmp_path / "arch.json")
    assert not (tmp_path / "arch.json").exists()


def test_a_search_with_an_unknown_cost_is_refused(tmp_path):
    config = TrainConfig(dataset="breastmnist", model="advanced_cnn")
    with pytest.raises(MedbenchError, match="--cost must be one of params, flops"):
        search(config, tmp_path / "out", 1, cost="latency", progress=False)


USER_NET = """
from torch import nn


def build(in_channels, num_classes, image_size=28, *, width=8):
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def space(trial):
    return {"width": trial.suggest_categorical("width", [2, 4, 16])}


build.search_space = space


def build_without_space(in_channels, num_classes, image_size=28):
    return build(in_channels, num_classes, image_size)


def build_bad_space(in_channels, num_classes, image_size=28, *, width=8):
    return build(in_channels, num_classes, image_size, width=width)


build_bad_space.search_space = lambda trial: {"depth": 3}
"""


def test_a_user_model_brings_its_space_on_the_builder(tmp_path):
    from medbench.workflows.nas import search_space

    path = tmp_path / "net.py"
    path.write_text(USER_NET)
    sample = search_space(f"{path}:build")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert all(sample(study.ask())["width"] in (2, 4, 16) for _ in range(5))
    with pytest.raises(MedbenchError, match=r"net:build_without_space has no architecture space"):
        search_space(f"{path}:build_without_space")
    with pytest.raises(MedbenchError, match="has no option depth; its options are: width"):
        search_space(f"{path}:build_bad_space")(study.ask())


@pytest.mark.slow
def test_a_search_over_a_user_model_trains_its_sampled_widths(tmp_path):
    from medbench.data.synthetic import write_synthetic_like

    write_synthetic_like(tmp_path / "data", "breastmnist", 28, n_train=32, n_val=16, n_test=16)
    path = tmp_path / "net.py"
    path.write_text(USER_NET)
    base = TrainConfig(
        dataset="breastmnist", model=f"{path}:build", epochs=1, batch_size=16, device="cpu",
        data_dir=str(tmp_path / "data"),
    )  # fmt: skip
    search(base, tmp_path / "out", 3, population_size=2, progress=False)
    study = optuna.load_study(
        study_name=None, storage=f"sqlite:///{tmp_path / 'out' / 'search.sqlite'}"
    )
    for trial in study.trials:
        width = trial.user_attrs["model_options"]["width"]
        n_in, n_classes = 1, 2  # the parameter count follows the sampled width
        assert (
            trial.user_attrs["n_params"] == n_in * width * 9 + width + width * n_classes + n_classes
        )


@pytest.mark.parametrize("cost", ["params", "flops"])
def test_the_front_plot_is_a_readable_png_at_the_path_it_returns(cost, tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="search-blood")
    study.set_user_attr("metric", "auc")
    study.set_user_attr("cost", cost)
    for i in range(8):
        n_params = 50_000 * (1 + (i * 5) % 8)
        sizes = {"n_params": n_params, "flops": 40 * n_params}
        value, cost_value = 0.6 + 0.04 * (i % 5), sizes["n_params" if cost == "params" else "flops"]
        study.add_trial(create_trial(values=[value, cost_value], user_attrs=sizes))
    rc_before = dict(matplotlib.rcParams)
    path = plot_front(study, tmp_path / "pareto.png")
    assert path == tmp_path / "pareto.png"
    assert path.stat().st_size > 10_000  # axes, points and labels, not an empty canvas
    height, width, _ = matplotlib.image.imread(path).shape
    assert height > 300 and width > 400
    assert dict(matplotlib.rcParams) == rc_before  # Optuna's ggplot style stays inside
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary left
