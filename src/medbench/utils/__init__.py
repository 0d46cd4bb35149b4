"""Plumbing every layer uses: atomic file writes (fsutil) and the device, threads and precision a run uses (runtime)."""
