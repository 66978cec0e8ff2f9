"""``python -m histobag``: the command line, also as ``torchrun ... -m histobag extract ...``."""

import sys

from histobag.cli import main

sys.exit(main())
