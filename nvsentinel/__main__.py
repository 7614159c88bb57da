"""`python -m nvsentinel` is the `nvsentinel` command."""
import sys

from nvsentinel.cli import main

sys.exit(main())
