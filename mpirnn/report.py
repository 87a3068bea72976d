"""`python -m mpirnn.report`: the command; the code is in mpirnn/tools/report.py."""

import sys

from mpirnn.tools.report import main

if __name__ == "__main__":
    sys.exit(main())
