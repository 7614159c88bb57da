import sys

from nvsentinel.daemons.device_api_server import main

sys.exit(main())
