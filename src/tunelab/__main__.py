"""`python -m tunelab` (and `torchrun -m tunelab train CONFIG`) runs the command line."""

import sys

from tunelab.cli import main

if __name__ == "__main__":
    sys.exit(main())
