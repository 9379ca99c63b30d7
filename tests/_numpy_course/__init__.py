"""The project's own course-style NumPy code for the NumPy-bridge tests (written for jaxbp:
the idioms and shapes of the courses, not their solutions)."""
