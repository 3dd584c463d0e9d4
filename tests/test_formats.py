"""Each source format the OLMoE mixture (and its neighbours) uses, converted to one conversation shape."""

import pytest

from adapt.data.formats import RowError, converter, detect_format, parse_hh_transcript

U, A = "user", "assistant"


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


SFT_CASES = [
    ("messages", {"messages": conv((U, "q"), (A, "a"))}, conv((U, "q"), (A, "a"))),
    ("messages", {"messages": conv(("system", "s"), (U, "q"), (A, "a"), (U, "q2"), (A, "a2"))},
     conv(("system", "s"), (U, "q"), (A, "a"), (U, "q2"), (A, "a2"))),
    ("conversations", {"system": "be brief", "conversations": [{"from": "human", "value": "q"},
                                                               {"from": "gpt", "value": "a"}]},
     conv(("system", "be brief"), (U, "q"), (A, "a"))),
    ("query_answer", {"query": "write code", "answer": "print(1)"}, conv((U, "write code"), (A, "print(1)"))),
    ("query_response", {"query": "1+1?", "response": "2"}, conv((U, "1+1?"), (A, "2"))),
    ("alpaca", {"instruction": "Add", "input": "1 and 2", "output": "3"}, conv((U, "Add\n\n1 and 2"), (A, "3"))),
    ("alpaca", {"instruction": "Say hi", "input": "", "output": "hi"}, conv((U, "Say hi"), (A, "hi"))),
    ("prompt_completion", {"prompt": "p", "completion": "c"}, conv((U, "p"), (A, "c"))),
]


@pytest.mark.parametrize("fmt, row, expected", SFT_CASES)
def test_sft_formats(fmt, row, expected):
    assert detect_format(set(row), "sft") == fmt
    assert converter(fmt, "sft")(row) == {"messages": expected}


def test_ultrafeedback_strings_and_message_lists():
    strings = {"prompt": "p", "chosen": "good", "rejected": "bad"}
    lists = {"prompt": "p", "chosen": conv((U, "p"), (A, "good")), "rejected": conv((U, "p"), (A, "bad"))}
    expected = {"prompt": conv((U, "p")), "chosen": conv((A, "good")), "rejected": conv((A, "bad"))}
    for row in (strings, lists):
        assert detect_format(set(row), "dpo") == "prompt_chosen_rejected"
        assert converter("prompt_chosen_rejected", "dpo")(row) == expected


def test_hh_rlhf_transcripts():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: go away"
    row = {"chosen": chosen, "rejected": rejected}
    assert detect_format(set(row), "dpo") == "hh_rlhf"
    out = converter("hh_rlhf", "dpo")(row)
    assert out["prompt"] == conv((U, "hi"), (A, "hello"), (U, "how are you?"))
    assert out["chosen"] == conv((A, "fine, thanks")) and out["rejected"] == conv((A, "go away"))
    with pytest.raises(RowError, match="diverge"):
        converter("hh_rlhf", "dpo")({"chosen": chosen, "rejected": "\n\nHuman: other\n\nAssistant: x"})
    assert parse_hh_transcript("\n\nHuman: a\n\nAssistant: b") == conv((U, "a"), (A, "b"))


def test_real_hh_rlhf_and_ultrafeedback_files_convert(shared):
    from adapt.config.sections import DataSection, DataSource
    from conftest import mixture_rows

    for path in ("preference/hh-rlhf/helpful-base-test.jsonl.gz", "preference/ultrafeedback/train_clean.jsonl"):
        data = DataSection(sources=[DataSource(path=str(shared / "data" / path))], on_bad_row="skip")
        mixture = mixture_rows(data, "dpo")
        summary = mixture.sources[0]
        assert summary["rows_kept"] > 0.95 * summary["rows_read"], summary
        row = mixture.train[0]
        assert row["chosen"][0]["role"] == "assistant" and row["prompt"][-1]["role"] == "user"


def test_real_code_alpaca_converts(shared):
    from adapt.config.sections import DataSection, DataSource
    from adapt.data.sources import DataError
    from conftest import mixture_rows

    path = str(shared / "data/sft/code_alpaca_2k.json")
    with pytest.raises(DataError, match=r"code_alpaca_2k.json: row \d+: empty assistant turn"):
        mixture_rows(DataSection(sources=[DataSource(path=path)]), "sft")  # real rows with empty outputs
    mixture = mixture_rows(DataSection(sources=[DataSource(path=path)], on_bad_row="skip"), "sft")
    summary = mixture.sources[0]
    assert summary["format"] == "alpaca" and summary["rows_read"] == 2017
    assert summary["rows_kept"] + sum(summary["dropped"].values()) == 2017
    assert set(summary["dropped"]) == {"empty assistant turn"} and len(mixture.train) == summary["rows_kept"]
