"""Sources of raw data: MovieLens-100K and the synthetic log generator."""
