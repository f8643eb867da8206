import sys

from capsbench.cli import main

sys.exit(main())
