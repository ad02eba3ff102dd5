"""Unit tests of entity_vectors.lifecycle."""
