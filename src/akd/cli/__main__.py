"""``python -m akd.cli <command>``: the same as ``akd <command>``."""

import sys

from akd.cli import main

sys.exit(main())
