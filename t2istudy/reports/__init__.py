"""The study's own reports: the ladder (verdict against training minutes), where the preset stands against its
targets, and the check of RESULTS.md's numbers against the CSVs they quote."""
