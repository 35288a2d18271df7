"""`python -m gateway.runnerproc`: the runner process (child.py), started by the gateway."""

import sys

from gateway.runnerproc.child import main

sys.exit(main())
