import sys

from mcsl_core.cli import main

sys.exit(main())
