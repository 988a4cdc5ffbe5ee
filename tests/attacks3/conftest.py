"""Re-use the suite's fixtures: a live emulator, the real CLI in a subprocess (tests/conftest.py)."""

from tests.conftest import agent, control, emulator, pool, zygote  # noqa: F401
from tests.test_truth import tagged, two_pools  # noqa: F401
