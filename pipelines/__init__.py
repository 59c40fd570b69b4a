"""MLOps pipeline for NYC 2013 flight delays."""
