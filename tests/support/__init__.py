"""Helpers shared by the tests: small grids, fake trainings and tiny configs."""
