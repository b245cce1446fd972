"""``ppo-align train``: the run directory, the cached stages before PPO (warm start, reward model),
TRL's PPO trainer, and the behaviour monitor.
"""
