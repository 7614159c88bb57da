import sys

from nvsentinel.daemons.publisher import main

sys.exit(main())
