"""Other frameworks' checkpoints in and out: Hugging Face causal LMs of the Llama and Qwen families (hf_config:
their config.json as our model keys; hf_weights: their tensors as our parameters and back)."""
