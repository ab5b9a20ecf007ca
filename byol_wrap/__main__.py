"""``python -m byol_wrap ...`` runs the ``byol-wrap`` command (see :mod:`byol_wrap.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
