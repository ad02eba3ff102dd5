"""Search a team's entities: queries (vector, text, hybrid) and the labelled evaluation."""
