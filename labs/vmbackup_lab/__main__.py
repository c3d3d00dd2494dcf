"""`python -m vmbackup_lab`: the same as the `vmbackup-lab` command."""

import sys

from vmbackup_lab.cli import main

sys.exit(main())
