"""Hugging Face PEFT interoperability: FLix adapters as PEFT LoRA adapters and back."""
