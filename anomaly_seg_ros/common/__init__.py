"""The lowest layer: the project's errors, the label conventions and atomic file writes.

Every other package may import it; it imports nothing of the project.
"""
