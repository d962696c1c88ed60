"""configure_devices: no GPU is a WARNING when one was expected, INFO when it was not."""

from __future__ import annotations

import logging

import pytest
import tensorflow as tf

from worker.ml.model import configure_devices

GPU = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")


@pytest.fixture
def devices(monkeypatch: pytest.MonkeyPatch) -> list[tf.config.PhysicalDevice]:
    """The GPUs TensorFlow lists: none unless a test adds one, whatever this machine has."""
    gpus: list[tf.config.PhysicalDevice] = []
    real = tf.config.list_physical_devices

    def listed(device_type: str | None = None) -> list[tf.config.PhysicalDevice]:
        if device_type == "GPU":
            return list(gpus)
        cpus = real("CPU")
        return cpus if device_type == "CPU" else cpus + gpus

    monkeypatch.setattr(tf.config, "list_physical_devices", listed)
    return gpus


@pytest.mark.parametrize(
    ("expect_gpu", "cuda_visible_devices", "level"),
    [
        (True, None, logging.WARNING),
        (True, "-1", logging.WARNING),  # the setting wins over a variable hiding them
        (False, "0", logging.WARNING),
        (False, "1,2", logging.WARNING),
        (False, None, logging.INFO),
        (False, "", logging.INFO),  # "" and -1 hide the GPUs on purpose
        (False, "-1", logging.INFO),
    ],
)
def test_no_gpu_is_a_warning_only_when_one_was_expected(
    expect_gpu: bool,
    cuda_visible_devices: str | None,
    level: int,
    devices: list[tf.config.PhysicalDevice],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if cuda_visible_devices is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible_devices)
    caplog.set_level(logging.INFO, logger="worker.ml.model")

    names = configure_devices(expect_gpu=expect_gpu)

    assert names and all("GPU" not in name for name in names)
    [record] = [r for r in caplog.records if r.name == "worker.ml.model"]
    assert record.levelno == level
    assert "CPU" in record.getMessage()
    if level == logging.WARNING:
        # Names what was expected and the first thing to check: a TensorFlow without CUDA.
        message = record.getMessage()
        assert f"RETINAQ_EXPECT_GPU={'true' if expect_gpu else 'false'}" in message
        assert "built with CUDA" in message


def test_a_visible_gpu_gets_memory_growth_and_no_warning(
    devices: list[tf.config.PhysicalDevice],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    devices.append(GPU)
    grown: list[tuple[tf.config.PhysicalDevice, bool]] = []
    monkeypatch.setattr(
        tf.config.experimental, "set_memory_growth", lambda d, on: grown.append((d, on))
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    caplog.set_level(logging.INFO, logger="worker.ml.model")

    names = configure_devices(expect_gpu=True)

    assert grown == [(GPU, True)]
    assert GPU.name in names
    assert not [r for r in caplog.records if r.name == "worker.ml.model"]
