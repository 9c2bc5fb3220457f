"""``python -m ticketlab`` (and ``accelerate launch -m ticketlab``): the CLI."""

import sys

from ticketlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
