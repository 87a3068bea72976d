"""`python -m mpirnn.plan`: the command; the code is in mpirnn/tools/planner.py."""

import sys

from mpirnn.tools.planner import main



def cli() -> None:
    """Console-script entry point (`mpirnn-plan`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
