"""``ppo-align eval``: the targets, the harness that runs them, and results.json.
"""
