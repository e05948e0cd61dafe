"""rtmap: spatially map locoregional cancer recurrence onto the radiotherapy plan, as a lakehouse."""

__version__ = "0.1.0"
