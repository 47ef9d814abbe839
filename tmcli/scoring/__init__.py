"""Running a model over records already generated (`run`, the driver of `tmcli score`): the NLL
of each completion on its canonical ids (`nll`), how far the next-token distributions of the
generated and the canonical context differ after each non-canonical span (`divergence`), and
seed 001's SLERP merge of hidden states against the unmerged model (`merge`); both compared by
one measure (`compare`), on forwards registered by name (`forward`, `vllm_forward`).
"""
