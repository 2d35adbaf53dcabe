"""The visual tokenizer: clip encoders, hierarchical k-means and the codebook file."""
