"""Producing completions: prompts (`prompts`), the sweep that batches, seeds and resumes
(`sweep`), multi-turn conversations token-in/token-out (`trajectories`), the one seeded sampler
(`sampler`), canonical generation's oracle (`constrain`), and the engines that decode
(`engines/`), also as replicas on Ray (`data_parallel`).
"""
