"""Reporting: paired statistics, the fair comparison, tables, probes and plots."""
