"""Use cases the handlers call: accounts, sessions, streams, stream keys, invites, categories,
publishing, ingest, stream events."""
