"""sink: predictions into a store, served as a JSON API."""
