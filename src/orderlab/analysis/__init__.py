"""Analysis: evaluation, attention maps, pictures and the Jacobi benchmark."""
