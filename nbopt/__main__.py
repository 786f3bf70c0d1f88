"""``python -m nbopt ...`` (see :mod:`nbopt.cli`)."""
import sys

from .cli import main

sys.exit(main())
