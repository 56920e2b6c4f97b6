"""Embedded tasks (TFDS builders), tokenizers and the grain input pipeline."""
