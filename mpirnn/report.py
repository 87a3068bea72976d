"""`python -m mpirnn.report`: the command; the code is in mpirnn/tools/report.py."""

import sys

from mpirnn.tools.report import main



def cli() -> None:
    """Console-script entry point (`mpirnn-report`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
