import sys

from randmask.cli import main

sys.exit(main())
