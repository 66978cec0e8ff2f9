"""DatasetFeatures statistics agree with scipy and find planted differences; box plots."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from histobag.analysis import DatasetFeatures
from histobag.analysis.plots import box_plot_figure
from histobag.analysis.stats import normalise_labels, slide_values, tile_groups
from histobag.errors import HistobagError

N_FEATURES = 20
PLANTED = [3, 11]
CATEGORIES = {"tumor": 6, "normal": 6, "stroma": 4}


@pytest.fixture(scope="module")
def synthetic():
    """Slides of three categories; features 3 and 11 are shifted for 'tumor' slides."""
    rng = np.random.default_rng(1)  # a draw without chance false positives
    activations, labels = {}, {}
    for category, n_slides in CATEGORIES.items():
        for i in range(n_slides):
            slide = f"{category}-{i}"
            acts = rng.normal(size=(int(rng.integers(30, 60)), N_FEATURES)).astype(np.float32)
            if category == "tumor":
                acts[:, PLANTED] += 2.0
            activations[slide] = acts
            labels[slide] = category
    return DatasetFeatures.from_arrays(activations, annotations=labels), activations, labels


@pytest.mark.parametrize("test", ["anova", "kruskal"])
def test_stats_agree_with_scipy_and_find_the_planted_features(synthetic, test, tmp_path):
    dsf, activations, labels = synthetic
    tile_df, slide_df = dsf.stats(tmp_path, test=test)
    fn = stats.f_oneway if test == "anova" else stats.kruskal
    cats = sorted(CATEGORIES)
    for feature in range(N_FEATURES):
        tiles = [
            # in float64, as histobag computes (float32 input makes scipy's p underflow)
            np.concatenate(
                [a[:, feature] for s, a in activations.items() if labels[s] == c]
            ).astype(np.float64)
            for c in cats
        ]
        slides = [
            [
                a[:, feature].astype(np.float64).mean()
                for s, a in activations.items()
                if labels[s] == c
            ]
            for c in cats
        ]
        row_t = tile_df.set_index("feature").loc[feature]
        row_s = slide_df.set_index("feature").loc[feature]
        expect_t, expect_s = fn(*tiles), fn(*slides)
        assert row_t["statistic"] == pytest.approx(expect_t.statistic, rel=1e-4)
        assert row_t["p"] == pytest.approx(expect_t.pvalue, rel=1e-3, abs=1e-300)
        assert row_s["statistic"] == pytest.approx(expect_s.statistic, rel=1e-4)
        assert row_s["p"] == pytest.approx(expect_s.pvalue, rel=1e-3, abs=1e-300)
    for df in (tile_df, slide_df):
        # BH-adjusted exactly as scipy does it, and only the planted features survive
        ordered = df.sort_values("feature")
        np.testing.assert_allclose(
            ordered["p_fdr"], stats.false_discovery_control(ordered["p"], method="bh")
        )
        assert sorted(df.loc[df["p_fdr"] < 0.05, "feature"]) == PLANTED
        assert list(df["feature"][:2].sort_values()) == PLANTED  # sorted by p-value
        assert {f"mean_{c}" for c in cats} | {f"n_{c}" for c in cats} <= set(df.columns)
    assert tile_df["n_stroma"].iloc[0] == sum(len(activations[f"stroma-{i}"]) for i in range(4))
    assert slide_df["n_stroma"].iloc[0] == 4
    written = pd.read_csv(tmp_path / "slide_stats.csv")
    assert list(written["feature"]) == list(slide_df["feature"])
    assert (tmp_path / "tile_stats.csv").is_file()


def test_threshold_method_counts_tiles_above_the_threshold(synthetic):
    _, activations, _ = synthetic
    values = slide_values(activations, "threshold", threshold=0.25)
    for slide, acts in activations.items():
        np.testing.assert_allclose(values[slide], (acts > 0.25).mean(axis=0))
    dsf = synthetic[0]
    _, slide_df = dsf.stats(method="threshold")
    assert set(slide_df.loc[slide_df["p_fdr"] < 0.05, "feature"]) <= set(PLANTED)
    with pytest.raises(HistobagError, match="method"):
        dsf.stats(method="median")
    with pytest.raises(HistobagError, match="test"):
        dsf.stats(test="t")


def test_labels_from_a_dict_or_from_dataset_labels():
    assert normalise_labels({"a": "x", "b y": 1}) == {"a": "x", "b_y": "1"}
    assert normalise_labels(({"a": 1, "b": 0}, ["normal", "tumor"])) == {
        "a": "tumor",
        "b": "normal",
    }
    with pytest.raises(HistobagError, match="two categories"):
        tile_groups({"a": np.zeros((2, 2))}, {"a": "x"})
    unlabelled = DatasetFeatures.from_arrays({"a": np.zeros((3, 2))})
    with pytest.raises(HistobagError, match="No labels"):
        unlabelled.stats()


def test_box_plots_are_real_pictures(synthetic, tmp_path):
    dsf, activations, labels = synthetic
    paths = dsf.box_plots([3, 5], tmp_path / "plots")
    assert [p.name for p in paths] == ["box_plot_3.png", "box_plot_5.png"]
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        assert image.shape[0] >= 300 and image.shape[1] >= 600
        assert image.std() > 20  # not blank
    groups = tile_groups(activations, labels)
    slides = {
        c: np.stack([v for s, v in slide_values(activations).items() if labels[s] == c])
        for c in groups
    }
    fig = box_plot_figure(groups, slides, 3)
    tiles_ax, slides_ax = fig.axes
    for ax in (tiles_ax, slides_ax):
        assert [t.get_text() for t in ax.get_xticklabels()] == sorted(CATEGORIES)
    assert slides_ax.get_title() == "slides (n=16)"
