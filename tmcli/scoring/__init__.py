"""Running a model over records already generated: the NLL of each completion on its
canonical ids (`nll`).
"""
