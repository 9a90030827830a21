"""Revisions of the job database (tables ``staging_jobs``, ``staging_chunks``, ``staging_events``)."""
