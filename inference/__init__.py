"""The inference server: base model plus weighted adapters, KAITO's /chat and OpenAI-compatible endpoints."""
