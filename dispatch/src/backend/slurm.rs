//! A Slurm cluster through its command-line tools.
