"""Publishing to the Hugging Face Hub."""
