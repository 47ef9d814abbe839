"""Producing completions: prompts (`prompts`), the sweep that batches, seeds and resumes
(`sweep`), multi-turn conversations token-in/token-out (`trajectories`), the one seeded sampler
(`sampler`) and the truncation it applies first (top-k, top-p, min-p as transformers keeps them:
`truncation`, top-p's exact cut in `top_p`), canonical generation's oracle (`constrain`), and the
engines that decode (`engines/`), also as replicas on Ray (`data_parallel`).
"""
