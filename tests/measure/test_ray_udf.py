"""`tmcli.ray`: the `CheckIds` Ray Data UDF gives every row the verdict of `check_ids` (its runnable
example, on a local Ray), it is reached without importing Ray, and tmcli errors come back
through Ray's wrappers as themselves."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
from conftest import ROOT

import tmcli
from tmcli.errors import InvalidRecord, TmcliError
from tmcli.measure.ray_udf import CHECK_COLUMNS, CheckIds, user_error
from tmcli.measure.rollout_check import check_ids


def test_tmcli_ray_is_reached_without_importing_ray_or_torch():
    code = ("import sys, tmcli; tmcli.ray.CheckIds; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_errors_cross_process_boundaries_as_themselves():
    bad = pickle.loads(pickle.dumps(InvalidRecord("a.jsonl", 3, "malformed JSON", hint="fix it")))
    assert (type(bad), bad.source, bad.line, bad.detail, str(bad)) == (
        InvalidRecord, "a.jsonl", 3, "malformed JSON", "a.jsonl:3: malformed JSON; fix it")
    err = TmcliError("no model", hint="pass --model")
    wrapped = RuntimeError("task failed")
    wrapped.cause = RuntimeError("user code")  # how Ray's RayTaskError carries it
    wrapped.cause.__cause__ = err
    assert user_error(wrapped) is err and user_error(RuntimeError("x")) is None

    class Dual(TmcliError):  # Ray's RayTaskError(TmcliError): an instance of its cause's class
        pass

    dual = Dual("a traceback as text")
    dual.cause = err
    assert user_error(dual) is err


def test_check_ids_udf_on_numpy_batches_matches_check_ids():
    import numpy as np

    tok = tmcli.load_tokenizer("gpt2")
    ids = tok.encode(" together and it worked.", add_special_tokens=False).ids
    spelled = [tok.token_to_id(c) for c in ["Ġ", "t", "o", "g", "e", "t", "h", "e", "r"]] + ids[1:]
    prompt = tok.encode("We worked on it", add_special_tokens=False).ids
    batch = {"token_ids": np.array([np.array(ids), np.array(spelled)], dtype=object),
             "prompt_token_ids": np.array([prompt, prompt]), "id": np.array(["a", "b"])}
    out = CheckIds("gpt2")(batch).to_pydict()
    assert out["id"] == ["a", "b"] and set(CHECK_COLUMNS) <= set(out)
    assert out["canonical"] == [True, False] and out["first_divergence"] == [-1, 0]
    assert out["causes"] == [[], ["merged"]] and out["n_spans"] == [0, 1]
    assert out["canonical_token_ids"] == [ids, ids] and out["kind"] == ["canonical", "merged"]
    empty = CheckIds("gpt2")({"token_ids": np.array([], dtype=object),
                              "prompt_token_ids": np.array([], dtype=object)})
    assert empty.num_rows == 0 and empty.schema.field("canonical").type == "bool"
    with pytest.raises(TmcliError, match="no column 'ids'"):
        CheckIds("gpt2", ids_column="ids")(batch)


def test_the_ray_example_keeps_exactly_the_canonical_rollouts(local_ray, capsys):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import ray_check_ids as example
    finally:
        sys.path.remove(str(ROOT / "examples"))
    rows = example.main(workers=2)
    assert len(rows) == 2 * len(example.SENTENCES)
    for row in rows:  # each verdict is the one check_ids gives, and the one built in
        check = check_ids(example.TOKENIZER, row["token_ids"], row["prompt_token_ids"])
        assert row["canonical"] == check.canonical == row["expected"], row["id"]
        assert row["causes"] == [s.cause for s in check.spans]
        assert list(row["canonical_token_ids"]) == check.canonical_ids
        assert row["first_divergence"] == (-1 if row["expected"] else 0)
    assert f"kept {len(example.SENTENCES)} of {len(rows)} rollouts" in capsys.readouterr().out
