"""The Jupyter server extension: a thin adapter from REST requests to the staging manager."""
