"""`python -m mpirnn.bench`: the command; the code is in mpirnn/tools/bench.py."""

import sys

from mpirnn.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
