"""Fundus preprocessing: normalisation modes, Ben Graham, and each backbone's input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from common.imaging.preprocessing import (
    FundusPreprocessing,
    ben_graham,
    border_mask,
    normalise,
)
from common.imaging.preprocessing_steps import PREPROCESSING_VERSION
from common.modelling.manifest import ManifestError, ModelManifest
from common.screening.quality import QualityThresholds
from lab.synthetic import encode_image, generate_fundus

LIMIT = 50_000_000
# The serving sizes and preprocess_input modes of the backbones `retinaq train` offers.
BACKBONE_INPUTS = [
    ("small", 128, "rescale", 0.0, 1.0),
    ("mobilenetv2", 224, "tf", -1.0, 1.0),
    ("efficientnetb0", 224, "raw", 0.0, 255.0),
    ("resnet50", 224, "caffe", -123.68, 255.0 - 103.939),
    ("inceptionv3", 299, "tf", -1.0, 1.0),
    ("xception", 299, "tf", -1.0, 1.0),
    ("vgg16", 224, "caffe", -123.68, 255.0 - 103.939),
]


@pytest.fixture(scope="module")
def photograph() -> bytes:
    """A 45°-camera-like fundus JPEG, larger than any model input."""
    return encode_image(generate_fundus(3, seed=11, size=700))


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("rescale", 255, [1.0, 1.0, 1.0]),
        ("tf", 0, [-1.0, -1.0, -1.0]),
        ("tf", 255, [1.0, 1.0, 1.0]),
        ("raw", 7, [7.0, 7.0, 7.0]),
        ("caffe", 0, [-103.939, -116.779, -123.68]),
        ("torch", 0, [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]),
    ],
)
def test_normalise_modes(mode: str, value: int, expected: list[float]) -> None:
    pixels = np.full((1, 2, 2, 3), value, dtype=np.uint8)
    out = normalise(pixels, mode)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-5)


def test_caffe_swaps_to_bgr() -> None:
    pixels = np.zeros((1, 1, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # red
    out = normalise(pixels, "caffe")
    assert out[0, 0, 2] == pytest.approx(255 - 123.68)


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        normalise(np.zeros((1, 1, 3), dtype=np.uint8), "magic")
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        FundusPreprocessing(128, "magic")


@pytest.mark.parametrize(("arch", "size", "mode", "low", "high"), BACKBONE_INPUTS)
@pytest.mark.parametrize("graham", [False, True])
def test_each_backbone_gets_its_shape_and_range(
    photograph: bytes, arch: str, size: int, mode: str, low: float, high: float, graham: bool
) -> None:
    preprocessor = FundusPreprocessing(size, mode, ben_graham=graham)
    pixels = preprocessor.prepare(photograph, max_pixels=LIMIT)
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
    inputs = preprocessor.normalise(pixels[None])
    assert inputs.shape == (1, size, size, 3) and inputs.dtype == np.float32
    assert low - 1e-4 <= inputs.min() and inputs.max() <= high + 1e-4
    assert inputs.std() > 0.01 * (high - low)  # an image, not a constant


def test_ben_graham_evens_out_lighting_and_greys_the_border(photograph: bytes) -> None:
    plain = FundusPreprocessing(256, "rescale").prepare(photograph, max_pixels=LIMIT)
    # A strong left-to-right lighting gradient, as an unevenly lit camera gives.
    ramp = np.linspace(0.5, 1.3, 256, dtype=np.float32)[None, :, None]
    lit = np.clip(plain * ramp, 0, 255).astype(np.uint8)
    out = ben_graham(lit)
    mask = border_mask(lit)
    assert out[~mask].min() == out[~mask].max() == 128  # the frame is a flat grey
    inside = out[mask].reshape(-1, 3).astype(np.float32)
    left = out[:, 40:90][mask[:, 40:90]].mean()
    right = out[:, 166:216][mask[:, 166:216]].mean()
    raw_left = lit[:, 40:90][mask[:, 40:90]].mean()
    raw_right = lit[:, 166:216][mask[:, 166:216]].mean()
    assert raw_right - raw_left > 25  # the input is unevenly lit ...
    assert abs(right - left) < 8  # ... the output is not
    assert abs(inside.mean() - 128) < 12  # local colour removed: centred on mid-grey


def test_border_mask_follows_a_disc_cut_at_top_and_bottom() -> None:
    size = 200
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - 100) ** 2 + (xx - 100) ** 2 < 95**2) & (np.abs(yy - 100) < 80)
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[disc] = (180, 90, 40)
    mask = border_mask(pixels)
    assert mask[100, 100] and not mask[5, 100] and not mask[100, 3]
    assert not mask[19, 100] and mask[30, 100]  # eroded below the cut, not far below it
    assert mask.sum() < disc.sum()


def test_steps_name_every_stage_in_order() -> None:
    assert FundusPreprocessing(224, "tf").steps == (
        "crop_field_of_view",
        "pad_square",
        "resize_224",
        "normalise_tf",
    )
    assert FundusPreprocessing(128, "rescale", ben_graham=True).steps == (
        "crop_field_of_view",
        "pad_square",
        "resize_128",
        "ben_graham",
        "mask_border",
        "normalise_rescale",
    )


def _manifest(**fields: object) -> ModelManifest:
    base: dict[str, object] = {
        "name": "m",
        "version": "1",
        "sha256": "0" * 64,
        "input_size": 128,
        "preprocessing": "rescale",
    }
    return ModelManifest.from_dict({**base, **fields})


def test_manifest_names_its_steps_and_version() -> None:
    manifest = _manifest(ben_graham=True)
    data = manifest.to_dict()
    assert data["preprocessing_steps"] == list(manifest.preprocessor.steps)
    assert data["preprocessing_version"] == PREPROCESSING_VERSION
    assert ModelManifest.from_dict(data) == manifest


def test_manifest_refuses_steps_that_disagree_with_its_fields() -> None:
    steps = list(FundusPreprocessing(128, "rescale").steps)
    with pytest.raises(ManifestError, match="do not match"):
        _manifest(ben_graham=True, preprocessing_steps=steps)


def test_manifest_refuses_another_preprocessing_version() -> None:
    with pytest.raises(ManifestError, match="preprocessing version '0'"):
        _manifest(preprocessing_version="0")


def test_border_mask_keeps_dark_lesions_inside_the_disc() -> None:
    size = 200
    yy, xx = np.mgrid[:size, :size]
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[(yy - 100) ** 2 + (xx - 100) ** 2 < 90**2] = (180, 90, 40)
    pixels[(yy - 80) ** 2 + (xx - 120) ** 2 < 12**2] = (8, 2, 2)  # a dark haemorrhage
    mask = border_mask(pixels)
    assert mask[80, 120] and mask[100, 100]
    out = ben_graham(pixels)
    assert out[80, 120].max() < 100, "the haemorrhage shows dark, not masked to grey"


def test_manifest_refuses_unknown_quality_thresholds() -> None:
    assert _manifest(quality_thresholds={"min_focus": 0.2}).quality_thresholds == {"min_focus": 0.2}
    with pytest.raises(ManifestError, match="quality_thresholds: unknown"):
        _manifest(quality_thresholds={"sharpness": 3})


def test_serving_thresholds_layer_settings_over_manifest_over_defaults() -> None:
    manifest = _manifest(quality_thresholds={"min_focus": 0.2, "min_brightness": 30})
    thresholds = manifest.serving_quality_thresholds({"min_focus": 0.25})
    assert thresholds.min_focus == 0.25  # the deployment's setting wins
    assert thresholds.min_brightness == 30  # the manifest's, where settings are silent
    assert thresholds.max_brightness == QualityThresholds().max_brightness  # the default
    with pytest.raises(ValueError, match="unknown quality thresholds: sharpness"):
        manifest.serving_quality_thresholds({"sharpness": 1})


def test_a_long_thin_picture_is_squared_without_a_canvas_of_its_long_side() -> None:
    """With the quality check off, a 20,000 x 200 strip must not become a 20,000^2 canvas."""
    script = (
        "import resource\n"
        "from PIL import Image\n"
        "from common.imaging.preprocessing import square_fundus\n"
        "strip = Image.new('RGB', (20000, 200), (120, 60, 30))\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = square_fundus(strip, 224)\n"
        "assert out.shape == (224, 224, 3), out.shape\n"
        "assert out[:100].max() == 0 and out[112].max() > 0\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert int(done.stdout) < 100, f"squaring grew the process by {done.stdout.strip()} MiB"
