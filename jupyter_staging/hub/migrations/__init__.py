"""Revisions of the hub service's operations database (table ``operations``)."""
