import sys

from sdserve_backend.main import main

sys.exit(main())
