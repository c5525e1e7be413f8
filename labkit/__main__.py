"""`python -m labkit ...` is the `labkit` command (labkit.course.cli), for environments without the script on PATH."""

import sys

from .course.cli import main

sys.exit(main())
