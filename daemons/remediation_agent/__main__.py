import sys

from nvsentinel.daemons.remediation_agent import main

sys.exit(main())
