"""``python -m unitree``: the ``unitree`` command."""

import sys

from ._cli import main

sys.exit(main())
