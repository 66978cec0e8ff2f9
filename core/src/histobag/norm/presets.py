"""Named reference fits ("presets") for the stain normalizers; plain data, no torch.

``PRESETS[method][name]`` is a keyword dictionary for ``StainNormalizer.set_fit``.

* ``macenko`` / ``vahadane`` ``"v1"``: the H&E reference stain matrix (columns haematoxylin,
  eosin; rows R, G, B optical density, unit columns) and 99th-percentile maximum
  concentrations of the reference implementation of Macenko et al., "A method for
  normalizing histology slides for quantitative analysis", ISBI 2009; most implementations
  use them as their defaults.
* ``reinhard`` / ``reinhard_mask`` ``"v1"``: CIE L*a*b* means and standard deviations of an
  H&E-like reference tile: scikit-image's bundled ``immunohistochemistry()`` image normalised
  with ``Macenko("v1")`` (which re-renders its two stains with the H&E reference colours),
  measured over all pixels (``reinhard``) or over tissue pixels with L* < 90
  (``reinhard_mask``). ``tests/core/test_norm.py`` recomputes these numbers.
"""

from __future__ import annotations

from typing import Any

#: The preset a normalizer uses when none is given.
DEFAULT_PRESET = "v1"

_MACENKO_V1: dict[str, Any] = {
    "stain_matrix": [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]],
    "max_concentrations": [1.9705, 1.0308],
}

#: ``{method: {preset name: fit}}``.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "macenko": {"v1": _MACENKO_V1},
    "vahadane": {"v1": _MACENKO_V1},
    "reinhard": {
        "v1": {"means": [60.0707, 20.3722, -13.2761], "stds": [17.5597, 8.1937, 5.7899]},
    },
    "reinhard_mask": {
        "v1": {"means": [59.6171, 20.5926, -13.4198], "stds": [17.251, 8.0302, 5.6948]},
    },
}
