"""``python -m fedquant.report``: the command line of :mod:`fedquant.analysis.report`."""

from fedquant.analysis.report import main

if __name__ == "__main__":
    main()
