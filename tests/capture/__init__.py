"""Unit tests of entity_vectors.capture."""
