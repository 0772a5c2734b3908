"""`python -m pdsweep.cli`: the same command line as `pdsweep`."""

from pdsweep.cli.app import main

if __name__ == "__main__":  # not when a forked worker re-imports the main module (multiprocessing)
    main()
