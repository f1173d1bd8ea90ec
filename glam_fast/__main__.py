import sys

from glam_fast.cli import main

sys.exit(main())
