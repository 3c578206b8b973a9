"""Settings every test process shares: where the bundled model is, and the order of the files.

Services never look for the repository themselves (their settings require a model path), so
tests that build a service's settings in-process get the bundled model from here, as local
mode's processes get it from `servescope.cli.local`.
"""

from __future__ import annotations

import json
import os

import pytest

from servescope.cli.paths import bundled_model, bundled_model_card

os.environ.setdefault("SERVESCOPE_MODEL_PATH", str(bundled_model()))
os.environ.setdefault("SERVESCOPE_MODEL_CARDS", json.dumps([str(bundled_model_card())]))

# The longest test files, first: `make test` gives each file to one of two workers in
# collection order, so a long file collected last would run alone at the end.
LONGEST_FIRST = (
    "tests/labs/test_lifecycle.py",
    "tests/alerting/test_drill_matrix.py",
    "tests/integration/test_soak.py",
    "tests/bench/test_bench_smoke.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every file keeps its own order
