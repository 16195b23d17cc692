"""Text pipeline components: corpus, byte-level BPE, tokenization."""
