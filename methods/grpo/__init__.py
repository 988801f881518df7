"""GRPO baseline: TRL's GRPOTrainer on the same prompts, scorer, λ rule, evaluation and budget as ES."""
