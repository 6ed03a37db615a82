import sys

from .metadata import main

sys.exit(main())
