"""`python -m mpirnn.bench`: the command; the code is in mpirnn/tools/bench.py."""

import sys

from mpirnn.tools.bench import main



def cli() -> None:
    """Console-script entry point (`mpirnn-bench`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
