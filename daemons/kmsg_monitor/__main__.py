import sys

from nvsentinel.daemons.kmsg_monitor import main

sys.exit(main())
