"""Data: corpora (embedded and local), tokenizers, and the batch pipeline."""
