"""The dataset artifact a data stage writes, its augmentation, and the readers of dataset sources."""
