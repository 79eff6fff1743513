"""Reading the server's Prometheus page with Prometheus' own text parser."""

from __future__ import annotations

import urllib.request
from typing import Dict, Mapping

from prometheus_client.parser import text_string_to_metric_families

PATH = '/monitoring/prometheus/metrics'
Samples = Dict[tuple, float]


def parse(text: str) -> Samples:
  """{(sample name, sorted label items): value} for every sample on the page."""
  return {(s.name, tuple(sorted(s.labels.items()))): s.value
          for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(rest_url: str) -> Samples:
  with urllib.request.urlopen(rest_url + PATH, timeout=30) as response:
    assert response.status == 200
    assert response.headers['Content-Type'].startswith('text/plain; version=0.0.4')
    return parse(response.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
  return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
  return value(after, name, **labels) - value(before, name, **labels)


def total(samples: Samples, name: str, **labels: str) -> float:
  """Sum over the samples of `name` whose labels include `labels`."""
  return sum(v for (n, items), v in samples.items()
             if n == name and _matches(dict(items), labels))


def _matches(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
  return all(have.get(k) == v for k, v in want.items())
