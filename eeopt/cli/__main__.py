"""`python -m eeopt.cli`."""

import sys

from eeopt.cli import main

sys.exit(main())
