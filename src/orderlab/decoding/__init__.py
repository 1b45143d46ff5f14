"""Decoding: generation under a Plan, the plan and Jacobi decoders, sampling and scoring."""
