"""safety_demo: watch safety-steering decoding change a multimodal LLM's answer, token by token."""

__version__ = "0.1.0"
