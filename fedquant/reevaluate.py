"""``python -m fedquant.reevaluate``: the command line of :mod:`fedquant.analysis.reevaluate`."""

from fedquant.analysis.reevaluate import main

if __name__ == "__main__":
    main()
