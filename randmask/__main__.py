import sys

from randmask.cli.main import main

sys.exit(main())
