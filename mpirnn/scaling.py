"""`python -m mpirnn.scaling`: the command; the code is in mpirnn/tools/scaling.py."""

import sys

from mpirnn.tools.scaling import main

if __name__ == "__main__":
    sys.exit(main())
