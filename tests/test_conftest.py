"""The suite's schedule in tests/conftest.py names only test files that exist."""

import os

from conftest import FILE_SECONDS
from helpers.paths import REPO


def test_every_timed_file_exists():
  missing = [name for name in FILE_SECONDS if not os.path.isfile(os.path.join(REPO, "tests", name))]
  assert not missing, f"rename or remove these in tests/conftest.py FILE_SECONDS: {missing}"
