"""``python -m watchdog`` is ``gpu-watchdog``."""

import sys

from watchdog.cli import main

sys.exit(main())
