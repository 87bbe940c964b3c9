"""``python -m configcenter`` — the same as the ``configcenter`` command."""

from configcenter.cli import main

if __name__ == "__main__":
    main()
