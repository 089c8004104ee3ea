"""`python -m worker worker|reaper` (also: `blockprune worker|reaper`)."""

import sys

from worker.commands import main

sys.exit(main())
