"""Data Metabolism's diagnosis half: diagnose an evaluation run, plan the next data, and the loop
(evaluate -> diagnose -> plan -> apply -> version -> validate)."""
