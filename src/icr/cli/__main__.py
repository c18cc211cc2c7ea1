"""`python -m icr.cli ...` (what `accelerate launch -m icr.cli` runs)."""

import sys

from icr.cli import main

sys.exit(main())
