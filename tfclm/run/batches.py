"""The batches a run trains and evaluates on, in memory or streamed: the run never asks which."""

from tfclm.data.pipeline import make_dataset, stream_dataset
from tfclm.training.distribute import shard_by_data


class RunBatches:
    """Training and validation batches of one run, sharded across workers.

    `train_batches(first_epoch, epochs, skip)` gives the batches of `epochs`
    passes from `first_epoch` on, less the first `skip` micro-batches (what a
    resumed run already trained on); `epoch_length(epoch)` an epoch's
    micro-batches, which a stream knows only once its pass has been read.
    """

    def __init__(self, config, prepared, model, *, batch_size: int, micro: int, steps_per_epoch: int | None):
        self.config, self.prepared, self.model = config, prepared, model
        self.batch_size, self.micro = batch_size, micro
        self.streaming = config.data.streaming
        self.per_epoch = None if self.streaming else steps_per_epoch * micro
        self.pass_lengths = {}  # a stream's batches per pass, once read

    def epoch_length(self, epoch: int) -> int | None:
        return self.per_epoch if self.per_epoch is not None else self.pass_lengths.get(epoch)

    def validation_batches(self):
        config, tokenizer = self.config, self.prepared.tokenizer
        batch_size = config.evaluate.batch_size
        if self.streaming:
            return shard_by_data(stream_dataset(config, tokenizer, "validation", batch_size, shuffle=False))
        train = config.train
        return shard_by_data(
            make_dataset(train.pipeline, self.prepared.validation, batch_size, False, train.seed, self.model, tokenizer)
        )

    def train_batches(self, first_epoch: int, epochs: int, skip: int):
        config, tokenizer, micro = self.config, self.prepared.tokenizer, self.micro
        if self.streaming:
            ds = stream_dataset(
                config, tokenizer, "train", self.batch_size, True, first_epoch, skip, self.pass_lengths, micro
            )
        else:
            train = config.train
            ds = make_dataset(
                train.pipeline,
                self.prepared.train,
                self.batch_size,
                True,
                train.seed,
                self.model,
                tokenizer,
                epochs,
                skip,
                first_epoch,
                micro,
            )
        return shard_by_data(ds)

    def passes(self, epoch: int, batches: int, epochs: int) -> list[tuple]:
        """The Keras fits that train from (epoch, batches) to `epochs`: (initial_epoch, epochs, steps, dataset).

        A resume inside an epoch trains the rest of it as an epoch of its own, so every epoch Keras runs is one
        pass over the data: epoch ends (validation, samples, checkpoints) fall where an uninterrupted run has them.
        """
        fits = []
        if batches:
            rest = None if self.per_epoch is None else self.per_epoch - batches
            fits.append((epoch, epoch + 1, rest, self.train_batches(epoch, 1, batches)))
        first = epoch + (1 if batches else 0)
        if first < epochs:
            fits.append((first, epochs, self.per_epoch, self.train_batches(first, epochs - first, 0)))
        return fits
