"""Instruction data (Data Metabolism) as files: the canonical sample, the trainer formats (LLaVA,
ShareGPT, OpenAI, HF Parquet), their reader and writer, and the batch column helpers."""
