import sys

from nvsentinel.daemons.controllers import main

sys.exit(main())
