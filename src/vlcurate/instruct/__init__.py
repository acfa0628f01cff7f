"""Instruction data (Data Metabolism): trainer formats, the canonical sample, batch column helpers,
and synthetic instruction data with planted faults."""
