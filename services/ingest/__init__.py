"""ingest: posts from the X API v2 filtered stream (or a replay file) into the `tweets` topic."""
