"""Fundus preprocessing: the one implementation of the pixels a model sees.

Training, evaluation, the benchmark and the worker all build a :class:`FundusPreprocessing`
from the model's manifest and call it, so an image is prepared identically wherever it is
graded. Its steps: crop to the field-of-view disc, pad to a centred square, resize to the
model's input, optionally Ben Graham's local-colour normalisation with a border mask, then
the backbone's own ``preprocess_input`` scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from common.imaging.decode import FIELD_OF_VIEW_THRESHOLD, decode_image, field_of_view_box
from common.imaging.pixel_budget import PixelBudget
from common.imaging.preprocessing_steps import NORMALISATIONS, preprocessing_steps

# Decoding keeps at least this many pixels a side, so the quality checks see fine detail
# (focus) even for a model whose input is small.
MIN_DECODE_SIDE = 512
BEN_GRAHAM_SIGMA = 1 / 30  # of the image side (Graham, Kaggle 2015)
BORDER_MARGIN = 0.04  # of the image side masked inside the field-of-view edge

_CAFFE_MEANS_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def square_fundus(image: Image.Image, size: int) -> np.ndarray:
    """Crop to the field of view, fit its long side to ``size``, centre it on a black square:
    uint8 HxWx3. Resizing before padding keeps the canvas at ``size``, however long and
    thin the picture (padding first would allocate its long side squared)."""
    cropped = image.crop(field_of_view_box(image))
    scale = size / max(cropped.size)
    width = min(size, max(1, round(cropped.width * scale)))
    height = min(size, max(1, round(cropped.height * scale)))
    resized = cropped.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(resized, ((size - width) // 2, (size - height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def border_mask(pixels: np.ndarray, margin: float = BORDER_MARGIN) -> np.ndarray:
    """Field-of-view pixels at least ``margin`` of the side inside its edge: bool HxW.

    The disc is what lies between the first and last bright pixel of both its row and its
    column, so a dark haemorrhage inside it stays in. Eroding the disc keeps the bright
    ring a blur leaves along the black frame out of the image, and it follows a disc cut
    off at the top and bottom as well as a round one.
    """
    bright = np.asarray(Image.fromarray(pixels).convert("L")) > FIELD_OF_VIEW_THRESHOLD
    within_row = (
        np.maximum.accumulate(bright, axis=1)
        & np.maximum.accumulate(bright[:, ::-1], axis=1)[:, ::-1]
    )
    within_column = (
        np.maximum.accumulate(bright, axis=0) & np.maximum.accumulate(bright[::-1], axis=0)[::-1]
    )
    disc = Image.fromarray((within_row & within_column).astype(np.uint8) * 255)
    width = 2 * max(1, round(pixels.shape[0] * margin)) + 1
    return np.asarray(disc.filter(ImageFilter.MinFilter(width))) > 0


def ben_graham(pixels: np.ndarray) -> np.ndarray:
    """``4*img - 4*blur(img) + 128`` inside the border mask, grey 128 outside: uint8 HxWx3.

    Subtracting the local average colour removes the lighting and pigmentation that vary
    between cameras and people, and leaves lesions and vessels as the contrast.
    """
    image = Image.fromarray(pixels)
    blurred = image.filter(ImageFilter.GaussianBlur(pixels.shape[0] * BEN_GRAHAM_SIGMA))
    out = 4.0 * pixels.astype(np.float32) - 4.0 * np.asarray(blurred, dtype=np.float32) + 128.0
    out = np.where(border_mask(pixels)[..., None], out, 128.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def normalise(pixels: np.ndarray, mode: str) -> np.ndarray:
    """Scale uint8 RGB pixels (…xHxWx3) the way the backbone was trained: float32 out.

    The modes are those of ``keras.applications.*.preprocess_input``; ``rescale`` is our
    own CNN's [0, 1] and ``raw`` leaves 0..255 to a model that scales inside itself
    (EfficientNet).
    """
    x = pixels.astype(np.float32)
    if mode == "rescale":
        return x / 255.0
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return x[..., ::-1] - _CAFFE_MEANS_BGR
    if mode == "torch":
        return (x / 255.0 - _TORCH_MEAN) / _TORCH_STD
    if mode == "raw":
        return x
    raise ValueError(f"unknown preprocessing mode {mode!r}")


@dataclass(frozen=True)
class FundusPreprocessing:
    """How one model's input is made from a photograph; built from its manifest."""

    input_size: int
    normalisation: str
    ben_graham: bool = False

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"preprocessing must be one of {NORMALISATIONS}, not {self.normalisation!r}"
            )

    @property
    def steps(self) -> tuple[str, ...]:
        """The steps in order, named as the manifest and every result record them."""
        return preprocessing_steps(self.input_size, self.normalisation, self.ben_graham)

    @property
    def decode_side(self) -> int:
        """The shorter side an image is decoded or reduced to, at least: twice the input,
        and enough for quality."""
        return max(2 * self.input_size, MIN_DECODE_SIDE)

    def decode(
        self, data: bytes, *, max_pixels: int, budget: PixelBudget | None = None
    ) -> Image.Image:
        """Bytes to an upright RGB image at a shorter side of at least :attr:`decode_side`.

        Full-resolution pixels exist only while decoding (held in ``budget`` if given), so
        what the quality check and preprocessing copy is the reduced image.
        """
        return decode_image(data, max_pixels=max_pixels, draft_size=self.decode_side, budget=budget)

    def square(self, image: Image.Image) -> np.ndarray:
        """The photograph's field of view at the input size: what a person would look at."""
        return square_fundus(image, self.input_size)

    def pixels(self, image: Image.Image) -> np.ndarray:
        """A decoded photograph to the model's uint8 square input (before normalising)."""
        return self.model_input(self.square(image))

    def model_input(self, square: np.ndarray) -> np.ndarray:
        """The square field of view to the model's uint8 input: Ben Graham's, if the model's."""
        return ben_graham(square) if self.ben_graham else square

    def prepare(
        self, data: bytes, *, max_pixels: int, budget: PixelBudget | None = None
    ) -> np.ndarray:
        """Bytes to the uint8 square input, unchecked (training's path; serving's is
        :func:`common.imaging.prepare.prepare_image`). Raises
        :class:`common.imaging.decode.ImageDecodeError`."""
        return self.pixels(self.decode(data, max_pixels=max_pixels, budget=budget))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 inputs (…xHxWx3) to the float32 the model takes."""
        return normalise(pixels, self.normalisation)
