import sys

from worker.commands import main

sys.exit(main())
