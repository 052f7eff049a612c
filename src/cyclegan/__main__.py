"""``python -m cyclegan <command>``, the same as the ``cyclegan`` command."""

import sys

from cyclegan.cli import main

sys.exit(main())
