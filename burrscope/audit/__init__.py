"""The audit stage's library: which labels are probably wrong (confident), which photos show the same part or
fit nowhere (neighbours), the pooled features those rest on (features), and the findings as tables (findings,
groups)."""
