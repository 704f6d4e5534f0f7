import json

import pytest

from tfclm.config import DataConfig
from tfclm.corpus import load_builtin, pydoc_topics
from tfclm.errors import ConfigError
from tfclm.sources import load_documents, parse_split, split_documents, unique_documents

from conftest import eli5_records


def test_builtin_corpus_is_real_distinct_english():
    docs = load_builtin("builtin:pydoc")
    assert len(docs) > 500 and sum(map(len, docs)) > 1_000_000
    assert any("list" in d and "append" in d for d in docs)
    assert docs == load_builtin("builtin:pydoc")  # a fixed order: the split is reproducible
    assert len(pydoc_topics()) > 50


def test_unknown_builtin_names_the_known_ones():
    with pytest.raises(ConfigError, match="builtin:pydoc"):
        load_documents(DataConfig(dataset="builtin:nope"))


def test_eli5_like_jsonl_is_flattened_and_answers_joined(eli5_jsonl):
    docs = load_documents(DataConfig(dataset=eli5_jsonl, text_column="answers.text", join_separator=" | "))
    first = eli5_records()[0]["answers"]["text"]
    assert docs[0] == f"{first[0]} | {first[1]}"
    assert len(docs) == 24


def test_saved_dataset_directory_with_split_slice(tmp_path):
    import datasets

    path = str(tmp_path / "saved")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(eli5_records())}).save_to_disk(path)
    docs = load_documents(DataConfig(dataset=path, split="train[:5]", text_column="answers.text"))
    assert len(docs) == 5 and docs[0] == " ".join(eli5_records()[0]["answers"]["text"])
    with pytest.raises(ConfigError, match="no split 'validation'; its splits are: train"):
        load_documents(DataConfig(dataset=path, split="validation", text_column="answers.text"))


def test_csv_and_text_files(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("id,body\n1,first document\n2,second document\n2,second document\n")
    assert load_documents(DataConfig(dataset=str(csv), text_column="body")) == ["first document", "second document"]
    txt = tmp_path / "d.txt"
    txt.write_text("line one\nline two\n\nline three\n")
    assert load_documents(DataConfig(dataset=str(txt))) == ["line one", "line two", "line three"]


def test_missing_column_lists_the_columns(eli5_jsonl):
    with pytest.raises(ConfigError) as info:
        load_documents(DataConfig(dataset=eli5_jsonl, text_column="answer.text"))
    message = str(info.value)
    assert message.startswith("data.text_column: no column 'answer.text'") and "answers.text" in message and "title" in message


def test_non_text_column_is_refused(eli5_jsonl):
    with pytest.raises(ConfigError, match="answers.score.*not text"):
        load_documents(DataConfig(dataset=eli5_jsonl, text_column="answers.score"))


def test_missing_path_unknown_extension_and_bad_split(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_documents(DataConfig(dataset=str(tmp_path / "nope.jsonl")))
    odd = tmp_path / "d.xml"
    odd.write_text("<a/>")
    with pytest.raises(ConfigError, match="unknown extension '.xml'"):
        load_documents(DataConfig(dataset=str(odd)))
    with pytest.raises(ConfigError, match="data.split"):
        parse_split("train[:5000")


def test_too_few_documents(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": "only"}) + "\n" + json.dumps({"text": "only"}) + "\n")
    with pytest.raises(ConfigError, match="1 non-empty distinct document"):
        load_documents(DataConfig(dataset=str(path)))


def test_split_is_seeded_by_document_and_disjoint():
    docs = [f"doc {i}" for i in range(50)]
    train, val = split_documents(docs, 0.2, seed=7)
    assert (len(train), len(val)) == (40, 10)
    assert not set(train) & set(val) and sorted(train + val) == sorted(docs)
    assert split_documents(docs, 0.2, seed=7) == (train, val)
    assert split_documents(docs, 0.2, seed=8) != (train, val)


def test_duplicates_and_empties_are_dropped_in_order():
    assert unique_documents(["b", "a", " ", "b ", "a", "c"]) == ["b", "a", "c"]
