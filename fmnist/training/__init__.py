"""Training one member: the loop, batch augmentation, and data parallelism over processes."""
