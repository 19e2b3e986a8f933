"""Pykka actors: one StreamActor per live stream ingested on this node, and their directory."""
