"""``python -m robustprune.cli`` (and ``torchrun -m robustprune.cli``): the console script."""

import sys

from robustprune.cli import main

sys.exit(main())
