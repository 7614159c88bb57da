import sys

from nvsentinel.daemons.nvml_provider import main

sys.exit(main())
