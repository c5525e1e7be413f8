"""`python -m labkit ...` is the `labkit` command (labkit.cli), for environments without the script on PATH."""

import sys

from .cli import main

sys.exit(main())
