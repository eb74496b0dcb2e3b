"""Content-addressed result store and background jobs (stage 4: cache)."""
