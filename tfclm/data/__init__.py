"""The data stage: text in, packed token blocks and `tf.data` batches out.

Holds the sources (local files, Hub datasets, the built-in corpus), document
selection and the train/validation split, the tokenizer (trained or loaded),
packing into blocks with its cache, and the `tf.data` pipelines that yield
the batch contract. May import `tfclm.config`, `tfclm.files`, `tfclm.errors`
and `tfclm.backend`; never training, evaluation, generation or the Hub.
"""
