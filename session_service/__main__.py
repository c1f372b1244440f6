from session_service.cli import main
import sys
sys.exit(main())
