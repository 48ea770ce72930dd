"""Mesh creation, logical axis rules and shardings."""
