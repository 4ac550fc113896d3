"""``python -m visionkit``: the command-line interface."""

import sys

from visionkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
