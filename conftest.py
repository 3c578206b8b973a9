"""Settings every test process shares: where the bundled model is.

Services never look for the repository themselves (their settings require a model path), so
tests that build a service's settings in-process get the bundled model from here, as local
mode's processes get it from `servescope.cli.local`.
"""

from __future__ import annotations

import json
import os

from servescope.cli.paths import bundled_model, bundled_model_card

os.environ.setdefault("SERVESCOPE_MODEL_PATH", str(bundled_model()))
os.environ.setdefault("SERVESCOPE_MODEL_CARDS", json.dumps([str(bundled_model_card())]))
