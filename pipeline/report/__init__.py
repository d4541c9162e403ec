"""What a run leaves: report.json/report.md and the plot, the terminal tables, the schema, the CI
outputs (JUnit, metrics) and the gate against a baseline report."""
