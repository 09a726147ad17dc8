"""bptt: character-level RNN language models with first-class backpropagation through time."""

__version__ = "0.1.0"
