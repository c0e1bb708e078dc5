"""`python -m dynrcnn ...` is the `dynrcnn` command."""

import sys

from dynrcnn.cli import main

sys.exit(main())
