"""The core: the EntityConfig strategy, the registry, a run's inputs, embedding versions."""
