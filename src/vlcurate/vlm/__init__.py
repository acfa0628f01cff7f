"""The VLM client: one async client for OpenAI-compatible chat completions with images (vLLM, SGLang,
Ollama, llama.cpp, OpenAI): concurrency limits, retries, a response cache, structured output, usage."""
