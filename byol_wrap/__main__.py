"""``python -m byol_wrap ...`` runs the ``byol-wrap`` command (see :mod:`byol_wrap.job.cli`)."""
import sys

from .job.cli import main

if __name__ == "__main__":
    sys.exit(main())
