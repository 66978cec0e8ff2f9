"""Named reference fits ("presets") for the stain normalizers; plain data, no torch.

``PRESETS[method][name]`` is a keyword dictionary for ``StainNormalizer.set_fit``.

* ``macenko``, ``macenko_fast``, ``reinhard``, ``reinhard_fast``, ``reinhard_mask``,
  ``reinhard_fast_mask`` and ``vahadane``: slideflow 3.0.2's presets ``v1``, ``v2`` and
  ``v3`` under the same names, with slideflow's values (what its ``get_fit()`` returns after
  ``fit(preset)``; ``tests/fixtures/slideflow-norm/`` records them). As in slideflow, ``v3``
  is the default, and ``vahadane`` has no ``v3``.
* ``legacy_*``: the fits histobag used before its normalizers took slideflow's meaning (its own
  ``"v1"``), kept so that bags made with them rebuild to exactly the same transform:
  ``legacy_macenko`` / ``legacy_vahadane`` ``"v1"`` is the H&E reference stain matrix and
  99th-percentile maximum concentrations of Macenko et al.'s reference implementation (the
  numbers slideflow calls ``v2``); ``legacy_reinhard`` / ``legacy_reinhard_mask`` ``"v1"``
  are the L*a*b* statistics of scikit-image's ``immunohistochemistry()`` image re-rendered by
  ``LegacyMacenko("v1")``, over all pixels or over tissue pixels (L* < 90).
"""

from __future__ import annotations

from typing import Any

#: The preset a slideflow-named normalizer uses when none is given (slideflow's default).
DEFAULT_PRESET = "v3"

_MACENKO_V1: dict[str, Any] = {
    "stain_matrix": [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]],
    "max_concentrations": [1.9705, 1.0308],
}

# slideflow fits its "_mask" variants without the mask, so they share the unmasked presets.
_REINHARD: dict[str, dict[str, Any]] = {
    "v1": {
        "means": [72.27289581298828, 22.998310089111328, -13.860236167907715],
        "stds": [15.59449577331543, 9.64208698272705, 9.290526390075684],
    },
    "v2": {
        "means": [72.90999603271484, 20.826799392700195, -4.946513652801514],
        "stds": [18.560712814331055, 14.889294624328613, 5.6756696701049805],
    },
    "v3": {
        "means": [65.22132110595703, 28.934267044067383, -14.142518997192383],
        "stds": [15.800227165222168, 9.26378345489502, 6.0213303565979],
    },
}
_REINHARD_FAST: dict[str, dict[str, Any]] = {
    "v1": {
        "means": [63.71194076538086, 20.716245651245117, -12.290745735168457],
        "stds": [14.527810096740723, 8.34400463104248, 8.300264358520508],
    },
    "v2": {
        "means": [69.20197296142578, 19.824979782104492, -4.690998077392578],
        "stds": [17.715829849243164, 14.156415939331055, 5.417606353759766],
    },
    "v3": {
        "means": [58.12342834472656, 26.483482360839844, -12.701004981994629],
        "stds": [14.67502212524414, 7.574416637420654, 5.226377964019775],
    },
}

#: ``{method: {preset name: fit}}``.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "macenko": {
        "v1": {
            "stain_matrix": [
                [0.6311154365539551, 0.24816133081912994],
                [0.6962834000587463, 0.8226448893547058],
                [0.3418812155723572, 0.5115382075309753],
            ],
            "max_concentrations": [1.4423683881759644, 0.9685806035995483],
        },
        "v2": {
            "stain_matrix": [
                [0.5626000165939331, 0.2159000039100647],
                [0.7200999855995178, 0.8011999726295471],
                [0.40619999170303345, 0.5580999851226807],
            ],
            "max_concentrations": [1.9704999923706055, 1.0307999849319458],
        },
        "v3": {
            "stain_matrix": [
                [0.5062568187713623, 0.22186939418315887],
                [0.7532230615615845, 0.8652154803276062],
                [0.4069173336029053, 0.42241501808166504],
            ],
            "max_concentrations": [1.7656903266906738, 1.2797492742538452],
        },
    },
    "macenko_fast": {
        "v1": {
            "stain_matrix": [
                [0.6148018836975098, 0.21480363607406616],
                [0.7010871767997742, 0.8231793642044067],
                [0.3612416386604309, 0.525580883026123],
            ],
            "max_concentrations": [1.8029537200927734, 0.9606744050979614],
        },
        "v2": {
            "stain_matrix": [
                [0.5626000165939331, 0.2159000039100647],
                [0.7200999855995178, 0.8011999726295471],
                [0.40619999170303345, 0.5580999851226807],
            ],
            "max_concentrations": [1.9704999923706055, 1.0307999849319458],
        },
        "v3": {
            "stain_matrix": [
                [0.5200032591819763, 0.26235368847846985],
                [0.7350858449935913, 0.8349541425704956],
                [0.4249616861343384, 0.4630996882915497],
            ],
            "max_concentrations": [2.0259454250335693, 1.4088873863220215],
        },
    },
    "reinhard": _REINHARD,
    "reinhard_fast": _REINHARD_FAST,
    "reinhard_mask": _REINHARD,
    "reinhard_fast_mask": _REINHARD_FAST,
    "vahadane": {
        "v1": {
            "stain_matrix": [
                [0.9840825200080872, 0.1777121126651764, 0.0],
                [0.0, 0.8709622621536255, 0.4913499355316162],
            ]
        },
        "v2": {
            "stain_matrix": [
                [0.9546568393707275, 0.2977084219455719, 0.0],
                [0.0, 0.8053333759307861, 0.5928221344947815],
            ]
        },
    },
    "legacy_macenko": {"v1": _MACENKO_V1},
    "legacy_vahadane": {"v1": _MACENKO_V1},
    "legacy_reinhard": {
        "v1": {"means": [60.0707, 20.3722, -13.2761], "stds": [17.5597, 8.1937, 5.7899]},
    },
    "legacy_reinhard_mask": {
        "v1": {"means": [59.6171, 20.5926, -13.4198], "stds": [17.251, 8.0302, 5.6948]},
    },
}
