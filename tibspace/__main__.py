"""``python -m tibspace``: the command line of :mod:`tibspace.cli` (exit status 0 done, 2 bad input, 130 interrupted)."""

import sys

from tibspace.cli import main

sys.exit(main())
