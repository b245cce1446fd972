"""``ppo-align report``: the runs, the document, its Markdown and HTML, the claims and the figures.
"""
