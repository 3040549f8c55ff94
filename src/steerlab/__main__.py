"""``python -m steerlab``: the same command line as the ``steerlab`` console script."""

from steerlab.cli import main

main()
