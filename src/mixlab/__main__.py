"""``python -m mixlab``: the same as the ``mixlab`` command."""

from mixlab.cli import main

if __name__ == "__main__":
    main()
