"""``python -m coordinator`` is the ``lowwater`` command."""

import sys

from coordinator.cli import main

sys.exit(main())
