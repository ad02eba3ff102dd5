"""Unit tests of entity_vectors.bulk."""
