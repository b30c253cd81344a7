import sys

from daemon.cli import main

if __name__ == "__main__":  # not when a decoder child (spawned) imports this module
    sys.exit(main())
