"""``python -m kn_lens`` (and ``torchrun -m kn_lens``): the ``kn-lens`` command line."""

import sys

from kn_lens.cli import main

if __name__ == "__main__":
    sys.exit(main())
