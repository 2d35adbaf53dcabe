"""Single-device model code: the joint VideoBERT transformer, its vocabulary and presets, the visual
tokenizer (clip encoders, hierarchical k-means, codebook), fused kernels with their PyTorch
reference twins, and import/export with transformers. Nothing here is distributed; the trainer
applies DeepSpeed."""
