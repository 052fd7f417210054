#!/usr/bin/env python3
"""kiln's entry point: `python bake.py <command> --env ENV`."""

import sys

from kiln.cli import main

if __name__ == "__main__":
    sys.exit(main())
