"""Use cases the handlers call: accounts, sessions, channels, ingest, stream events."""
