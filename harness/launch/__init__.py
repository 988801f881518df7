"""Launchers: the command line, benchmark specs, SLURM and Docker jobs, the GPU benchmark and fixed-policy
evaluation. They start processes and read specs; nothing below them imports them."""
