import json

import pytest

from tfclm.config import DataConfig
from tfclm.data.corpus import load_builtin, pydoc_topics
from tfclm.data.sources import load_documents, parse_split, split_documents, unique_documents
from tfclm.errors import ConfigError

from helpers import eli5_records


@pytest.mark.slow
def test_builtin_corpus_is_real_distinct_english():
    docs = load_builtin("builtin:pydoc")
    assert len(docs) > 500 and sum(map(len, docs)) > 1_000_000
    assert any("list" in d and "append" in d for d in docs)
    assert docs == load_builtin("builtin:pydoc")  # a fixed order: the split is reproducible
    assert len(pydoc_topics()) > 50
    # data.max_documents reads the corpus only as far as it keeps: the same documents as the whole corpus's first.
    whole = list(unique_documents(docs))
    for keep in (40, len(pydoc_topics()) + 5):
        assert load_documents(DataConfig(dataset="builtin:pydoc", max_documents=keep)) == whole[:keep]


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


def test_csv_json_parquet_files(tmp_path):
    import datasets

    csv = tmp_path / "d.csv"
    csv.write_text("id,body\n1,first document\n2,second document\n2,second document\n")
    assert load_documents(DataConfig(dataset=str(csv), text_column="body")) == ["first document", "second document"]
    array = tmp_path / "d.json"
    array.write_text(json.dumps([{"meta": {"body": "one"}}, {"meta": {"body": "two"}}]))
    assert load_documents(DataConfig(dataset=str(array), text_column="meta.body")) == ["one", "two"]
    parquet = str(tmp_path / "d.parquet")
    datasets.Dataset.from_list(eli5_records(3)).to_parquet(parquet)
    assert load_documents(DataConfig(dataset=parquet, text_column="answers.text")) == [
        " ".join(r["answers"]["text"]) for r in eli5_records(3)
    ]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("file", ["line one\nline two\n\nline three\n", "other file\n"]),
        ("paragraph", ["line one\nline two", "line three", "other file"]),
        ("line", ["line one", "line two", "line three", "other file"]),
    ],
)
def test_text_files_and_folders_by_document_mode(tmp_path, mode, expected):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("line one\nline two\n\nline three\n")
    (folder / "b.txt").write_text("other file\n")
    assert load_documents(DataConfig(dataset=str(folder), txt_document=mode)) == expected
    assert load_documents(DataConfig(dataset=str(folder / "a.txt"), txt_document=mode)) == expected[:-1]


def test_template_combines_fields(eli5_jsonl):
    docs = load_documents(
        DataConfig(dataset=eli5_jsonl, text_template="Q: {title}\nA: {answers.text}", join_separator=" / ")
    )
    record = eli5_records()[0]
    assert docs[0] == f"Q: {record['title']}\nA: {' / '.join(record['answers']['text'])}"
    with pytest.raises(ConfigError, match=r"data.text_template: no column 'titel'; the columns are: q_id, title"):
        load_documents(DataConfig(dataset=eli5_jsonl, text_template="{titel}"))


def test_validation_choices(tmp_path, eli5_jsonl):
    import datasets

    from tfclm.data.sources import train_and_validation

    saved = str(tmp_path / "saved")
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(eli5_records(20)),
            "validation": datasets.Dataset.from_list(eli5_records(24)[20:]),
        }
    ).save_to_disk(saved)
    data = DataConfig(dataset=saved, text_column="answers.text", validation_split="validation")
    train, val, how = train_and_validation(data, seed=1)
    assert (len(train), len(val)) == (20, 4) and how == f"validation: 4 documents from split 'validation' of {saved}"
    extra = tmp_path / "val.txt"
    extra.write_text("held out text\n")
    train, val, how = train_and_validation(
        DataConfig(dataset=eli5_jsonl, text_column="answers.text", validation_split=str(extra)), seed=1
    )
    assert (len(train), val) == (24, ["held out text\n"]) and str(extra) in how
    train, val, how = train_and_validation(DataConfig(dataset=eli5_jsonl, text_column="answers.text"), seed=1)
    assert (len(train), len(val)) == (19, 5) and how.startswith("validation: a seeded 20% of the documents (5 of 24)")
    with pytest.raises(ConfigError, match="data.split"):
        train_and_validation(DataConfig(dataset=saved, text_column="answers.text", validation_split="test"), seed=1)


def test_missing_column_lists_the_columns(eli5_jsonl):
    with pytest.raises(ConfigError) as info:
        load_documents(DataConfig(dataset=eli5_jsonl, text_column="answer.text"))
    message = str(info.value)
    assert (
        message.startswith("data.text_column: no column 'answer.text'")
        and "answers.text" in message
        and "title" in message
    )


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
    from tfclm.data.sources import train_and_validation

    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": "only"}) + "\n" + json.dumps({"text": "only"}) + "\n")
    with pytest.raises(ConfigError, match="gave 1 distinct document; splitting needs at least 2"):
        train_and_validation(DataConfig(dataset=str(path)), seed=0)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": "  "}) + "\n")
    with pytest.raises(ConfigError, match="gave no non-empty document"):
        load_documents(DataConfig(dataset=str(empty)))


def test_split_is_seeded_by_document_and_disjoint():
    docs = [f"doc {i}" for i in range(50)]
    train, val = split_documents(docs, 0.2, seed=7)
    assert (len(train), len(val)) == (40, 10)
    assert not set(train) & set(val) and sorted(train + val) == sorted(docs)
    assert split_documents(docs, 0.2, seed=7) == (train, val)
    assert split_documents(docs, 0.2, seed=8) != (train, val)


def test_duplicates_and_empties_are_dropped_in_order():
    assert list(unique_documents(["b", "a", " ", "b ", "a", "c"])) == ["b", "a", "c"]
    assert list(unique_documents(["b", "a", "b", "c", "d"], limit=2)) == ["b", "a"]
