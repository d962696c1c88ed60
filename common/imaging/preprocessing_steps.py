"""The preprocessing's names and version, without pixels: what a manifest and a result say.

Kept apart from :mod:`common.imaging.preprocessing` (numpy and Pillow) so that the API
can read and list manifests without loading the imaging code.
"""

from __future__ import annotations

# Bump whenever the pixels a given manifest produces change: results store it, and a model
# trained under another version is refused rather than fed pixels it never saw.
PREPROCESSING_VERSION = "2"
NORMALISATIONS = ("rescale", "tf", "caffe", "torch", "raw")


def preprocessing_steps(input_size: int, normalisation: str, ben_graham: bool) -> tuple[str, ...]:
    """The steps in order, named as the manifest and every result record them."""
    graham = ("ben_graham", "mask_border") if ben_graham else ()
    return (
        "crop_field_of_view",
        "pad_square",
        f"resize_{input_size}",
        *graham,
        f"normalise_{normalisation}",
    )
