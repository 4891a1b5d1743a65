"""Hypothesis profiles for the fuzz tests, chosen by ``HYPOTHESIS_PROFILE``: ``default`` is the
short, derandomized run of ``make test``; ``fuzz`` (``make fuzz``) explores at random, with many
more examples (``FUZZ_EXAMPLES``, 2000 by default, per test)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

PROFILE_ENV = "HYPOTHESIS_PROFILE"
_SLOW_INPUT_CHECKS = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
]
# make test: a fixed budget, the same examples on every run, nothing remembered between runs;
# a failure is reported as found (shrinking a hang would replay it, at seconds each).
settings.register_profile(
    "default",
    max_examples=50,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    derandomize=True,
    database=None,
    deadline=None,  # each call has its own deadline below, with a clearer message
    suppress_health_check=_SLOW_INPUT_CHECKS,
    print_blob=False,
)
# make fuzz: random exploration, thousands of examples; failures are saved and replayed first.
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")),
    derandomize=False,
    deadline=None,
    suppress_health_check=_SLOW_INPUT_CHECKS,
    phases=list(Phase),
    print_blob=True,
)
settings.load_profile(os.environ.get(PROFILE_ENV, "default"))
