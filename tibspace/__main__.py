import sys

from tibspace.cli import main

sys.exit(main())
