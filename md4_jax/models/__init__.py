"""Networks: `denoise(z, t) -> logits` callables built from config."""
