"""``python -m bench``: the speed benchmark (:mod:`bench.speed`)."""

import sys

from .speed import main

if __name__ == "__main__":
    sys.exit(main())
