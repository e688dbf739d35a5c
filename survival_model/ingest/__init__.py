"""Ingestion: discover, read, validate, pseudonymise and harmonise each institution's data into the
canonical cohort (DESIGN.md section 3.2), quarantining what fails validation."""
