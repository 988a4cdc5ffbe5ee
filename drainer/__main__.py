"""``python -m drainer``."""

import sys

from drainer.cli import main

sys.exit(main())
