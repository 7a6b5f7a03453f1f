"""``python -m churnlab.cli``: the same as the ``churnlab`` console script."""

import sys

from churnlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
