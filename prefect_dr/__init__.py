"""prefect-dr: disaster recovery for self-hosted Prefect servers."""

__version__ = "0.1.0"
