"""Operator commands (`sf categories`, `sf keys`), built on the services."""
