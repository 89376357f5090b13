"""``python -m breastus_training`` (also what ``torchrun -m breastus_training`` runs)."""

import sys

from .cli import main

sys.exit(main())
