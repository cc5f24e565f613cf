"""Task heads on the shared backbone adapter."""
