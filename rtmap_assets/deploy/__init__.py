"""Deployment profiles: how the same definitions run on more than one process or machine."""
