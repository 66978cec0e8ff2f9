"""Per-feature tests across outcome categories, at tile and slide level, with FDR control."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from histobag.errors import HistobagError
from histobag.naming import safe_name

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TESTS", "feature_tests", "normalise_labels", "slide_values", "tile_groups"]

#: Tests :func:`feature_tests` runs: one-way ANOVA (as slideflow) or Kruskal-Wallis.
TESTS = ("anova", "kruskal")


def normalise_labels(annotations: Any) -> dict[str, str]:
    """Slide → category name from a dict, or from ``(labels, unique)`` as returned by
    :meth:`histobag.Dataset.labels` (indices are turned back into names).

    Slide names are keyed by their sanitised form (:func:`histobag.naming.safe_name`), the
    name their features and bags carry.
    """
    return {safe_name(s): v for s, v in _as_names(annotations).items()}


def _as_names(annotations: Any) -> dict[str, str]:
    if annotations is None:
        return {}
    if isinstance(annotations, tuple) and len(annotations) == 2:
        labels, unique = annotations
        if isinstance(unique, Sequence) and not isinstance(unique, str):
            names = list(unique)
            return {
                str(s): str(names[v]) if isinstance(v, (int, np.integer)) else str(v)
                for s, v in labels.items()
            }
        annotations = labels
    if not isinstance(annotations, Mapping):
        raise HistobagError(
            "annotations must be a dict slide -> label or (labels, unique) from "
            "Dataset.labels(outcome)."
        )
    return {str(s): str(v) for s, v in annotations.items()}


def _categories(labels: Mapping[str, str], slides: Sequence[str]) -> list[str]:
    cats = sorted({labels[s] for s in slides if s in labels})
    if len(cats) < 2:
        raise HistobagError(
            f"Statistics need at least two categories among the labelled slides; found {cats}."
        )
    return cats


def tile_groups(
    activations: Mapping[str, np.ndarray], labels: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Category → stacked tile activations (n_tiles, F) of its slides."""
    cats = _categories(labels, list(activations))
    return {
        c: np.concatenate([a for s, a in activations.items() if labels.get(s) == c and len(a)])
        for c in cats
    }


def slide_values(
    activations: Mapping[str, np.ndarray], method: str = "mean", threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """One value per feature per slide.

    Args:
        activations: slide → (n_tiles, F).
        method: ``"mean"``: mean activation over the slide's tiles; ``"threshold"``: fraction
            of its tiles whose activation exceeds ``threshold`` (slideflow's two methods).
        threshold: Used by ``"threshold"``.
    """
    if method == "mean":
        return {s: a.mean(axis=0) for s, a in activations.items() if len(a)}
    if method == "threshold":
        return {s: (a > threshold).mean(axis=0) for s, a in activations.items() if len(a)}
    raise HistobagError(f"method must be 'mean' or 'threshold', not {method!r}")


def _run_test(groups: Sequence[np.ndarray], test: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy import stats

    if test not in TESTS:
        raise HistobagError(f"test must be one of {', '.join(TESTS)}, not {test!r}")
    if any(len(g) < 2 for g in groups):
        nan = np.full(groups[0].shape[1], np.nan)
        return nan, nan.copy()
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant features give NaN, reported as such
            fn = stats.f_oneway if test == "anova" else stats.kruskal
            result = fn(*groups, axis=0)
    return np.asarray(result.statistic, float), np.asarray(result.pvalue, float)


def _fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values over the finite ones (NaN stays NaN)."""
    from scipy import stats

    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def feature_tests(
    groups: Mapping[str, np.ndarray],
    test: str = "anova",
    feature_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Test each feature for a difference between categories.

    Args:
        groups: category → values (n_i, F) (tiles or slides of that category).
        test: ``"anova"`` (one-way ANOVA, ``scipy.stats.f_oneway``) or ``"kruskal"``
            (Kruskal-Wallis H test).
        feature_names: Names of the F features (default ``0..F-1``).

    Returns:
        One row per feature, sorted by p-value: ``feature``, ``statistic``, ``p``,
        ``p_fdr`` (Benjamini-Hochberg), ``mean_<category>`` for each category, ``n_<category>``.
    """
    import pandas as pd

    cats = list(groups)
    arrays = [np.asarray(groups[c], dtype=np.float64) for c in cats]
    statistic, p = _run_test(arrays, test)
    n_features = arrays[0].shape[1]
    names = list(feature_names) if feature_names is not None else list(range(n_features))
    data: dict[str, Any] = {"feature": names, "statistic": statistic, "p": p, "p_fdr": _fdr(p)}
    for c, a in zip(cats, arrays):
        data[f"mean_{c}"] = a.mean(axis=0)
    for c, a in zip(cats, arrays):
        data[f"n_{c}"] = np.full(n_features, len(a))
    df = pd.DataFrame(data)
    return df.sort_values("p", kind="stable", na_position="last").reset_index(drop=True)
