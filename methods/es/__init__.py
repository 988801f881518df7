"""Evolution Strategies on the Safe-RLHF objective: seeded in-place perturbations across engines."""
