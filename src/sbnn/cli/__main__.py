"""``python -m sbnn.cli`` (and ``torchrun -m sbnn.cli train ...``): the ``sbnn`` command."""

import sys

from sbnn.cli import main

sys.exit(main())
