"""vLLM engine set-up shared by ES, GRPO and evaluation; ``compat`` is the one module that names vLLM's private
symbols."""
