"""``python -m fedquant.export``: the command line of :mod:`fedquant.deploy.cli`."""

from fedquant.deploy.cli import main

if __name__ == "__main__":
    main()
