"""`python -m pdsweep.cli`: the same command line as `pdsweep`."""

from pdsweep.cli.app import main

main()
