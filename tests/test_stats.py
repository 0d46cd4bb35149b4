"""medbench.scoring.stats against hand calculations, independent implementations and published values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from medbench.errors import MedbenchError
from medbench.scoring import metrics, stats


def _binary_case(n: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, n))))
    return y, p


# ----------------------------------------------------------------------------- DeLong


def _delong_by_definition(y, score_a, score_b) -> tuple[float, ...]:
    """DeLong, DeLong & Clarke-Pearson (1988) as written: the kernel psi(x, y) = 1, 1/2, 0
    for x >, =, < y over every (positive, negative) pair, the structural components
    V10_i = mean_j psi(X_i, Y_j) and V01_j = mean_i psi(X_i, Y_j), and the covariance
    S10 / m + S01 / n. Returns (AUC a, AUC b, z, p, Var a). O(m n); shares no code with
    medbench.scoring.stats."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    v10, v01, aucs = [], [], []
    for s in (score_a, score_b):
        x, yy = s[pos], s[neg]
        psi = (x[:, None] > yy[None, :]) + 0.5 * (x[:, None] == yy[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    cov = s10 / m + s01 / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (aucs[0] - aucs[1]) / math.sqrt(var) if var > 0 else 0.0
    return aucs[0], aucs[1], z, 2 * sps.norm.sf(abs(z)), cov[0, 0]


def test_delong_equals_the_structural_components_definition_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 150)
    a = np.round(y * 0.8 + rng.normal(0, 1, 150), 1)  # rounded: many tied scores
    b = np.round(y * 0.3 + 0.5 * a + rng.normal(0, 1, 150), 1)
    test = stats.delong_test(y, 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b)))
    expected = _delong_by_definition(y, a, b)[:4]
    assert (test.auc_a, test.auc_b, test.z, test.p) == pytest.approx(expected, rel=1e-10)


def test_delong_on_a_hand_worked_example():
    # Positives p1..p3 and negatives n1..n3 scored by two models (b has a tie, 0.5 = 0.5).
    # By hand: AUC a = 8/9, AUC b = 6/9; V10 a = (1, 1, 2/3), V01 a = (2/3, 1, 1),
    # V10 b = (1, 1/2, 1/2), V01 b = (2/3, 1/3, 1); Var a = 2/81, Var b = 7/108,
    # Cov = 1/108, so Var(a - b) = 23/324 and z = (2/9) / sqrt(23/324) = 4 / sqrt(23).
    y = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.7, 0.4, 0.6, 0.3, 0.2])
    b = np.array([0.8, 0.5, 0.5, 0.5, 0.6, 0.1])
    aucs, cov = stats.delong_components(y, np.stack([a, b]))
    assert aucs == pytest.approx([8 / 9, 6 / 9])
    assert cov == pytest.approx(np.array([[2 / 81, 1 / 108], [1 / 108, 7 / 108]]))
    test = stats.delong_test(y, a, b)
    assert test.z == pytest.approx(4 / math.sqrt(23))
    assert test.p == pytest.approx(2 * sps.norm.sf(4 / math.sqrt(23)))


def test_delong_auc_reproduces_hanley_and_mcneil_s_published_ct_example():
    # Hanley & McNeil (1982), Radiology 143:29-36, table 1: 58 normal and 51 abnormal CT
    # images rated 1-5 (heavily tied scores); published AUC 0.893.
    normal, abnormal = [33, 6, 6, 11, 2], [3, 2, 2, 11, 33]
    y = np.r_[np.zeros(58), np.ones(51)].astype(int)
    rating = np.r_[np.repeat(np.arange(1, 6), normal), np.repeat(np.arange(1, 6), abnormal)]
    aucs, cov = stats.delong_components(y, rating[None, :].astype(float))
    assert round(float(aucs[0]), 3) == 0.893
    assert cov[0, 0] == pytest.approx(
        _delong_by_definition(y, rating.astype(float), rating.astype(float))[4]
    )


def test_delong_auc_is_sklearn_s_and_a_model_against_itself_has_p_one():
    y, p = _binary_case(200, 1.0, 0)
    test = stats.delong_test(y, p, p)
    assert test.auc_a == pytest.approx(roc_auc_score(y, p))
    assert (test.z, test.p) == (0.0, 1.0)


def test_delong_separates_a_strong_from_a_weak_model_and_is_antisymmetric():
    y, strong = _binary_case(400, 1.5, 1)
    _, weak = _binary_case(400, 0.2, 2)
    ab, ba = stats.delong_test(y, strong, weak), stats.delong_test(y, weak, strong)
    assert ab.p < 1e-6 and ab.z > 0
    assert (ba.z, ba.p) == pytest.approx((-ab.z, ab.p))


def test_delong_for_multi_class_is_a_paired_bootstrap_of_the_official_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.eye(3)[y] * 2 + rng.normal(0, 1, (300, 3))
    test = stats.delong_test(y, metrics.probabilities_from_logits(good, "multi-class"),
                             rng.dirichlet(np.ones(3), 300), "multi-class", n_boot=300)  # fmt: skip
    assert "paired bootstrap" in test.method and test.p < 0.01
    assert test.auc_a == pytest.approx(
        metrics.official_auc(
            y, metrics.probabilities_from_logits(good, "multi-class"), "multi-class"
        )
    )


def test_delong_needs_two_images_of_each_class():
    with pytest.raises(MedbenchError, match="at least 2 positive"):
        stats.delong_test([1, 0, 0], [0.9, 0.1, 0.2], [0.8, 0.3, 0.1])


# ----------------------------------------------------------------------------- McNemar


def _paired(a_only: int, b_only: int, both: int, neither: int) -> tuple[list[int], list[int]]:
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    return a, b


def test_mcnemar_chi_square_on_agresti_s_presidential_approval_table():
    # Agresti (1990), Categorical Data Analysis, p. 350: approval of the President in two
    # surveys of 1600 people (794 approve twice, 150 then not, 86 not then yes, 570 never).
    # R's documented example, mcnemar.test(Performance): chi-squared = 16.818, p = 4.115e-05.
    test = stats.mcnemar_test(*_paired(150, 86, 794, 570))
    assert round(test.statistic, 3) == 16.818
    assert test.p == pytest.approx(4.115e-05, rel=1e-3)
    assert "continuity" in test.method


def test_mcnemar_exact_on_fagerland_s_airway_example():
    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91, table 1: airway
    # hyper-responsiveness before/after stem cell transplantation (Bentur et al. 2009), with
    # 1 and 7 discordant pairs of 21; published exact conditional p-value 0.070.
    test = stats.mcnemar_test(*_paired(1, 7, 1, 12))
    assert round(test.p, 3) == 0.070 and test.statistic is None
    assert test.method == "McNemar exact binomial"


def test_mcnemar_without_discordant_pairs_has_p_one():
    assert stats.mcnemar_test([1, 0, 1], [1, 0, 1]).p == 1.0


# ----------------------------------------------------------------------------- Holm


def test_holm_on_a_hand_worked_example():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04, which
    # monotonicity raises to 0.06; then a step-down that rises, and a product capped at 1.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.4, 0.3]) == pytest.approx([0.6, 0.6])
    assert stats.holm([0.9, 0.8, 0.01]) == pytest.approx([1.0, 1.0, 0.03])


def test_holm_leaves_nan_out_of_the_count():
    assert stats.holm([0.01, math.nan, 0.02])[::2] == pytest.approx([0.02, 0.02])
    assert math.isnan(stats.holm([0.01, math.nan])[1])


def test_holm_agrees_with_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).random(12) ** 3
    expected = multitest.multipletests(p, method="holm")[1]
    assert stats.holm(p) == pytest.approx(list(expected))


# ----------------------------------------------------------------------------- ranks


SCORES = np.array(
    [
        [0.81, 0.84, 0.80, 0.86],
        [0.72, 0.75, 0.74, 0.78],
        [0.90, 0.91, 0.89, 0.93],
        [0.66, 0.70, 0.71, 0.69],
        [0.85, 0.88, 0.84, 0.87],
        [0.77, 0.79, 0.76, 0.82],
        [0.93, 0.95, 0.92, 0.96],
    ]
)
# scikit-posthocs 0.17.1, posthoc_nemenyi_friedman(SCORES), rounded to 6 places.
NEMENYI_P_SCIKIT_POSTHOCS = [
    [1.0, 0.162904, 0.996864, 0.035843],
    [0.162904, 1.0, 0.103343, 0.925379],
    [0.996864, 0.103343, 1.0, 0.019635],
    [0.035843, 0.925379, 0.019635, 1.0],
]


def test_nemenyi_q_matches_demsar_s_table():
    # Demsar (2006), JMLR 7:1-30, table 5(a), alpha = 0.05, k = 2..10.
    table = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
    assert [stats.nemenyi_q(k) for k in range(2, 11)] == pytest.approx(table, abs=1.5e-3)


def test_critical_difference_is_demsar_s_worked_example():
    # Demsar (2006), section 3.2.2: four classifiers on 14 data sets, CD = 1.25 at 0.05.
    assert round(stats.critical_difference(4, 14), 2) == 1.25


def test_average_ranks_give_rank_one_to_the_best_and_share_ties():
    scores = [[0.9, 0.8, 0.7], [0.6, 0.6, 0.9]] * 3
    result = stats.friedman_nemenyi(scores, ["a", "b", "c"])
    # per dataset: (1, 2, 3) and (2.5, 2.5, 1) -> means (1.75, 2.25, 2.0)
    assert result.average_ranks == pytest.approx([1.75, 2.25, 2.0])


def test_friedman_is_scipy_s_and_nemenyi_is_scikit_posthocs_s():
    result = stats.friedman_nemenyi(SCORES, ["A", "B", "C", "D"])
    chi2, p = sps.friedmanchisquare(*SCORES.T)
    assert (result.friedman_statistic, result.friedman_p) == pytest.approx((chi2, p))
    assert np.array(result.nemenyi_p) == pytest.approx(
        np.array(NEMENYI_P_SCIKIT_POSTHOCS), abs=1e-6
    )
    assert result.critical_difference == pytest.approx(stats.critical_difference(4, 7))


def test_nemenyi_agrees_with_scikit_posthocs_when_installed():
    sp = pytest.importorskip("scikit_posthocs")
    result = stats.friedman_nemenyi(SCORES)
    assert np.array(result.nemenyi_p) == pytest.approx(sp.posthoc_nemenyi_friedman(SCORES).values)


def test_wilcoxon_holm_is_scipy_s_wilcoxon_with_holm():
    result = stats.friedman_nemenyi(SCORES)
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    raw = [sps.wilcoxon(SCORES[:, i], SCORES[:, j]).pvalue for i, j in pairs]
    expected = stats.holm(raw)
    assert [result.wilcoxon_p_holm[i][j] for i, j in pairs] == pytest.approx(expected)


def test_groups_join_models_within_the_critical_difference():
    result = stats.friedman_nemenyi(SCORES, ["A", "B", "C", "D"])
    # ranks: D 1.43, B 1.86, A 3.29, C 3.43; CD 1.77: D-A and D-C differ, B-C does not.
    assert result.groups("nemenyi") == [["D", "B"], ["B", "A", "C"]]
    assert result.groups("wilcoxon-holm") == [["D", "B", "A", "C"]]


def test_fewer_than_five_datasets_are_not_tested_and_the_result_says_why():
    result = stats.friedman_nemenyi(SCORES[:4], ["A", "B", "C", "D"])
    assert not result.testable and result.friedman_p is None
    assert "4 datasets" in result.reason and "fewer than 5" in result.reason
    assert result.average_ranks and result.groups() == []


def test_two_models_are_ranked_by_wilcoxon_alone():
    result = stats.friedman_nemenyi(SCORES[:, :2], ["A", "B"])
    assert result.testable and result.friedman_p is None and result.wilcoxon_p_holm


def test_the_critical_difference_diagram_is_a_png_and_refuses_an_untestable_ranking(tmp_path):
    path = stats.critical_difference_diagram(stats.friedman_nemenyi(SCORES), tmp_path / "cd.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(MedbenchError, match="cannot be tested"):
        stats.critical_difference_diagram(stats.friedman_nemenyi(SCORES[:3]), tmp_path / "x.png")


# ----------------------------------------------------------------------------- bootstrap


def test_stratified_bootstrap_keeps_the_class_counts():
    y = np.array([0] * 30 + [1] * 10 + [2] * 5)
    for chunk in metrics.bootstrap_indices(y, "multi-class", n_boot=50, seed=1):
        assert all(np.bincount(y[row], minlength=3).tolist() == [30, 10, 5] for row in chunk)


def test_bootstrap_interval_holds_the_estimate_and_names_its_method():
    y, p = _binary_case(300, 1.0, 4)
    interval = stats.bootstrap_interval(y, p, "binary-class", "auc", n_boot=300)
    assert interval.low < interval.estimate < interval.high
    assert interval.estimate == pytest.approx(roc_auc_score(y, p))
    assert "within each class" in interval.method
    assert (interval.low, interval.high) == metrics.bootstrap_ci(y, p, "binary-class", "auc", 300)


def test_paired_bootstrap_finds_a_real_difference_and_none_between_a_model_and_itself():
    y, strong = _binary_case(300, 1.5, 5)
    _, weak = _binary_case(300, 0.1, 6)
    real = stats.paired_bootstrap(y, strong, weak, "binary-class", "acc", n_boot=500)
    assert real.difference > 0 and real.p < 0.01 and real.low > 0
    same = stats.paired_bootstrap(y, strong, strong, "binary-class", "auc", n_boot=200)
    assert same.difference == 0 and same.p == 1.0


def test_seed_and_sampling_interval_widens_with_the_seed_spread():
    y, p = _binary_case(300, 1.0, 7)
    reps = metrics.bootstrap_replicates(y, [p], "binary-class", "acc", n_boot=400)[0]
    value = metrics.official_acc(y, p, "binary-class")
    calm = stats.seed_and_sampling_interval([value] * 3, np.stack([reps] * 3))
    spread = stats.seed_and_sampling_interval(
        [value - 0.05, value, value + 0.05], np.stack([reps - 0.05, reps, reps + 0.05])
    )
    single_low, single_high = np.quantile(reps, [0.025, 0.975])
    assert calm.low == pytest.approx(single_low, abs=0.01)
    assert calm.high == pytest.approx(single_high, abs=0.01)
    assert spread.high - spread.low > calm.high - calm.low + 0.02
    assert spread.sd == pytest.approx(0.05) and spread.n_seeds == 3
    assert "two-level bootstrap" in spread.method


# ----------------------------------------------------------------------------- power


def test_hanley_mcneil_variance_by_hand():
    # A = 0.8: Q1 = 0.8/1.2, Q2 = 1.28/1.8; [0.16 + 49 (Q1 - 0.64) + 99 (Q2 - 0.64)] / 5000
    by_hand = (0.16 + 49 * (0.8 / 1.2 - 0.64) + 99 * (1.28 / 1.8 - 0.64)) / 5000
    assert stats.hanley_mcneil_variance(0.8, 50, 100) == pytest.approx(by_hand)
    assert by_hand == pytest.approx(0.00170133, rel=1e-5)


def test_resolvable_auc_difference_by_hand():
    # (z_0.975 + z_0.8) sqrt(2 V (1 - r)) = (1.959964 + 0.841621) sqrt(2 x 0.00170133 x 0.5)
    assert stats.resolvable_difference(50, 100, 0.8, 0.5) == pytest.approx(0.115558, rel=1e-4)
    assert stats.resolvable_difference(50, 100, 0.8, 1.0) == 0.0
    assert stats.resolvable_difference(500, 1000, 0.8, 0.5) < stats.resolvable_difference(
        50, 100, 0.8, 0.5
    )


def test_resolvable_auc_difference_over_classes_averages_their_variances():
    one = stats.resolvable_difference(40, 160, 0.9, 0.3)
    assert stats.resolvable_difference([40, 40], [160, 160], 0.9, 0.3) == pytest.approx(one)


def test_resolvable_accuracy_difference_inverts_connor_s_sample_size():
    # Connor (1987): psi = 0.2, delta = 0.1, alpha 0.05, power 0.8 needs
    # n = (1.959964 sqrt(0.2) + 0.841621 sqrt(0.19))^2 / 0.01 = 154.60 pairs.
    n = (1.959964 * math.sqrt(0.2) + 0.841621 * math.sqrt(0.19)) ** 2 / 0.01
    assert n == pytest.approx(154.60, abs=0.01)
    assert stats.resolvable_accuracy_difference(n, 0.8, 0.2) == pytest.approx(0.1, abs=1e-5)


def test_resolvable_accuracy_difference_is_infinite_on_a_split_too_small():
    assert stats.resolvable_accuracy_difference(10, 0.8, 0.05) == math.inf
    # None: independent errors, psi = 2 x 0.9 x 0.1 = 0.18
    assert stats.resolvable_accuracy_difference(500, 0.9) == pytest.approx(
        stats.resolvable_accuracy_difference(500, 0.9, 0.18)
    )


def test_seed_and_sampling_interval_takes_replicates_of_several_seeds_on_shared_resamples():
    y, first = _binary_case(300, 1.0, 8)
    seeds = [first, np.clip(first + np.random.default_rng(9).normal(0, 0.2, 300), 0, 1)]
    reps = metrics.bootstrap_replicates(y, seeds, "binary-class", "auc", n_boot=200)
    values = [metrics.official_auc(y, p, "binary-class") for p in seeds]
    interval = stats.seed_and_sampling_interval(values, reps, n_boot=500)
    assert reps.shape == (2, 200)
    assert interval.estimate == pytest.approx(np.mean(values))
    assert interval.low < interval.estimate < interval.high
