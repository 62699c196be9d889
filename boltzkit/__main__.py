"""``python -m boltzkit ...`` (also ``torchrun --nproc_per_node=N -m boltzkit sample ...``)."""

import sys

from .cli import main

sys.exit(main())
