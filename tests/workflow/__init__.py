"""Unit tests of entity_vectors.workflow, a module per stage."""
