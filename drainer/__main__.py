"""``python -m drainer``."""

import sys

from drainer.app.cli import main

sys.exit(main())
