"""`python -m services.ingest`: the service, or one of its commands (services/ingest/cli.py)."""

from .cli import main

if __name__ == "__main__":
    main()
