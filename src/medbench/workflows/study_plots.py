"""The figures of a tune and a search: a study's optimisation history and parameter
importances (`medbench.workflows.tune`), a search's Pareto front (`medbench.workflows.nas`),
each drawn with `optuna.visualization.matplotlib` and written as a PNG.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import optuna
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from optuna.trial import FrozenTrial, TrialState

from medbench.errors import MedbenchWarning
from medbench.utils.fsutil import atomic_savefig


@contextlib.contextmanager
def optuna_plot_style() -> Iterator[None]:
    """Draw one of `optuna.visualization.matplotlib`'s figures. They draw through pyplot and
    switch matplotlib to the ggplot style for the whole process: here the style holds until
    the figure is saved (matplotlib's settings are restored after), and the functions'
    ExperimentalWarning (Optuna marks them experimental) is silenced."""
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def save_optuna_plot(ax: Axes, path: Path) -> Path:
    """Write an Optuna plot's figure as a PNG, atomically, drawn by the Agg canvas (no
    display), and release it from pyplot."""
    fig = ax.get_figure(root=True)
    assert fig is not None  # an Axes made by pyplot belongs to a figure
    plt.close(fig)
    FigureCanvasAgg(fig)
    return atomic_savefig(fig, path)


def plot_history(study: optuna.Study, path: Path) -> Path:
    """Objective of each completed trial and the best so far, by trial number (Optuna's
    optimisation history). medbench adds the last reported value of each pruned trial,
    which Optuna's plot leaves out."""
    metric = f"validation {study.user_attrs.get('metric', 'metric')}"
    pruned = [
        (t.number, t.intermediate_values[step])
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if (step := t.last_step) is not None
    ]
    with optuna_plot_style():
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=metric)
        if pruned:
            ax.scatter(
                [number for number, _ in pruned],
                [value for _, value in pruned],
                s=14,
                marker="x",
                color="grey",
                label="pruned (last reported)",
            )
        ax.set_title(study.study_name, fontsize=9)
        ax.legend(fontsize=8)
        return save_optuna_plot(ax, path)


def plot_importance(study: optuna.Study, path: Path) -> Path | None:
    """fANOVA parameter importances as a bar chart (Optuna's); None (with a warning) when
    the study has too few completed trials to estimate them."""
    with optuna_plot_style():
        try:
            # fANOVA named, not Optuna's default evaluator: the default changed in Optuna 5.
            ax = optuna.visualization.matplotlib.plot_param_importances(
                study,
                evaluator=optuna.importance.FanovaImportanceEvaluator(),
                target_name="importance (fANOVA, completed trials)",
            )
        except (ValueError, RuntimeError) as exc:
            warnings.warn(f"no importance plot: {exc}", MedbenchWarning, stacklevel=2)
            return None
        if not ax.patches:  # no parameter to rank
            plt.close(ax.get_figure(root=True))
            return None
        ax.set_xlabel("importance (fANOVA, completed trials)")
        ax.set_title("", loc="left")  # Optuna's generic title, in place of the study's name
        ax.set_title(study.study_name, fontsize=9)
        if (legend := ax.get_legend()) is not None:  # one objective: the axis label names it
            legend.remove()
        return save_optuna_plot(ax, path)


def plot_front(study: optuna.Study, path: Path) -> Path:
    """Every completed trial by cost and validation metric, the Pareto front's trials marked
    (Optuna's Pareto-front plot). medbench adds what Optuna's leaves out: the front joined in
    order of cost, each front trial's number, and a log cost axis."""
    metric = study.user_attrs.get("metric", "auc")
    cost = study.user_attrs.get("cost", "params")
    key = "n_params" if cost == "params" else "flops"
    scale = 1e6 if cost == "params" else 1e9

    def point(trial: FrozenTrial) -> tuple[float, float]:
        return trial.user_attrs[key] / scale, trial.values[0]

    front = sorted(study.best_trials, key=lambda t: t.user_attrs[key])
    with optuna_plot_style():
        ax = optuna.visualization.matplotlib.plot_pareto_front(
            study,
            targets=point,
            target_names=[
                "parameters (M)" if cost == "params" else "GFLOPs",
                f"validation {metric}",
            ],
        )
        ax.plot(
            [point(t)[0] for t in front], [point(t)[1] for t in front], color="tab:red", zorder=1
        )
        for t in front:
            ax.annotate(
                str(t.number), point(t), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xscale("log")
        ax.set_title(study.study_name, fontsize=9)
        return save_optuna_plot(ax, path)
