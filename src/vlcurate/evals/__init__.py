"""Evaluation of VLMs on benchmarks (`vlcurate eval`): readers, answer extraction, the runner, and the
run format (`results.py`) that diagnosis and incremental validation read."""
