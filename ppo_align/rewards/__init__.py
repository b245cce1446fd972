"""Reward sources behind one interface (a float per response), the trained reward model, and the
pre-flight audit.
"""

# Recipes name the default reward function as "ppo_align.rewards:expected_behaviour".
from ppo_align.rewards.sources import expected_behaviour

__all__ = ["expected_behaviour"]
