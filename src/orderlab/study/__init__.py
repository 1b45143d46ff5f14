"""Training-seed studies: K models per arm, a grid of rows on each, paired comparisons with intervals."""
