"""Gather the sample-quality reports of a run or sweep folder into a table and a plot.

    python scripts/report.py runs/default [--out DIR]

The same as `diffuse report`; see diffuse_cli/evaluate/report.py.
"""

import sys

from diffuse_cli.evaluate.report import main

if __name__ == "__main__":
    sys.exit(main())
