"""``python -m balancer`` is the same as the ``session-balancer`` console script."""

import sys

from balancer.cli import main

sys.exit(main())
