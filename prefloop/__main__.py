"""``python -m prefloop``: the same command line as the ``prefloop`` script."""

import sys

from prefloop.app.front.cli import main

sys.exit(main())
