"""`python -m mpirnn.scaling`: the command; the code is in mpirnn/tools/scaling.py."""

import sys

from mpirnn.tools.scaling import main



def cli() -> None:
    """Console-script entry point (`mpirnn-scaling`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
