import sys

from blockprune.cli import main

sys.exit(main())
