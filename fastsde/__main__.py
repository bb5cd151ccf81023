"""`python -m fastsde` runs the `fastsde` command (also under torchrun)."""
import sys

from fastsde.cli import main

sys.exit(main())
