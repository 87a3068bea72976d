"""`python -m mpirnn.plan`: the command; the code is in mpirnn/tools/planner.py."""

import sys

from mpirnn.tools.planner import main

if __name__ == "__main__":
    sys.exit(main())
