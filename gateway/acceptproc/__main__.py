"""`python -m gateway.acceptproc`: one SMTP accept worker (worker.py), started by the gateway."""

import sys

from gateway.acceptproc.worker import main

sys.exit(main())
