"""Reading a Prometheus exposition the way Prometheus does (``prometheus_client.parser``),
for the tests that scrape ``/metrics`` of the API and the workers."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> Samples:
    """Every sample of an exposition, by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample_value(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample, 0 when the exposition lacks it (a counter not yet moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def summed(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    wanted = labels.items()
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and wanted <= dict(sample_labels).items()
    )


def metric_names(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
    """The sample names an exposition holds (``_bucket``, ``_count``, ``_total`` included)."""
    return {name for name, _ in samples}
