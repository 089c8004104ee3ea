"""How good is a pruned model: held-out perplexity, zero-shot tasks, speed and memory, each
measured on the model before and after pruning, side by side in one run."""

from core.evaluation.perplexity import perplexity

__all__ = ["perplexity"]
