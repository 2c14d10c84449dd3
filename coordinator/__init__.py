"""Coordinator: the public SearchService. Routes writes by consistent hashing, fans searches out, merges top-k."""
