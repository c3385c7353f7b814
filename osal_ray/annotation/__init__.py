"""Human annotators: label files, the ``files`` annotator's round folders, staged labels."""
