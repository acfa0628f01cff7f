"""Jobs that run over whole datasets: scoring now; recipes and executors build on it."""
