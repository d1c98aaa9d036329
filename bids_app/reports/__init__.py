"""HTML reports and QC figures."""
