import sys

from session_service.cli import main

sys.exit(main())
