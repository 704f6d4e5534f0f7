"""EleutherAI's lm-evaluation-harness on tfclm's TF models: the `tfclm` model type.

Importing this module registers the type (the harness finds models only by
import). `tfclm evaluate --tasks` and `python -m tfclm.evaluation.harness`
(the harness's own command line, with the type registered) use it:

    python -m tfclm.evaluation.harness --model tfclm --model_args pretrained=runs/default --tasks lambada_openai

Log-likelihoods are scored in batches through one compiled step (a batch
shape traces once), in float32; rolling log-likelihoods use the harness's
own windows of the model's positions; generation is tfclm's greedy decoding,
with XLA's length buckets so a new request length inside a bucket does not
compile again, cut at the task's stop sequences.
"""

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from tfclm.backend import tf
from tfclm.errors import ConfigError
from tfclm.evaluation.strided import right_padded
from tfclm.generation.generator import Generator
from tfclm.model.loading import load_trained, n_positions


@register_model("tfclm")
class TfclmLM(TemplateLM):
    """A tfclm output dir (or any save_pretrained folder of a TF causal LM) as a harness model.

    `pretrained` is the folder; `batch_size` the requests scored at once (8 for "auto"); `max_length` the
    tokens a request may use (default: the model's positions); `max_gen_toks` the default new tokens for
    generation; `xla` compiles generation (default true).
    """

    def __init__(
        self,
        pretrained: str,
        batch_size: int | str = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        xla: bool | str = True,
        **kwargs,
    ):
        super().__init__()
        self.model, self.tokenizer = load_trained(pretrained, key="pretrained")
        # The harness's "auto" probes device memory, which TF does not expose the same way: a fixed batch then.
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self._max_length = int(max_length) if max_length else n_positions(self.model) or 1024
        self._max_gen_toks = int(max_gen_toks)
        self.generator = Generator(self.model, self.tokenizer, xla=str(xla).lower() not in ("false", "0", "no"))
        self._score = _scorer(self.model)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log P(continuation | context), whether greedy decoding gives the continuation), per request."""
        rows = []
        for _, context, continuation in requests:
            whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
            rows.append((whole[:-1], whole[-len(continuation) :]))
        results = []
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            ids, mask = right_padded([inputs for inputs, _ in batch])
            targets = np.full_like(ids, -1)
            for i, (inputs, continuation) in enumerate(batch):
                # The logits at position t predict token t + 1: the continuation's are the last ones.
                targets[i, len(inputs) - len(continuation) : len(inputs)] = continuation
            totals, greedy = self._score(ids, mask, targets)
            results.extend(zip(totals.numpy().astype(float).tolist(), greedy.numpy().tolist()))
        return [(float(total), bool(is_greedy)) for total, is_greedy in results]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The whole text's log-likelihood, through the harness's windows of `max_length` tokens."""
        totals = []
        for (text,) in (request.args for request in requests):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            scored = self._loglikelihood_tokens([(None, *make_disjoint_window(w)) for w in windows])
            totals.append(sum(total for total, _ in scored))
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, where a task asks) text after each context, cut at the first stop sequence.

        Requests with the same generation settings go in batches of `batch_size`; tfclm's generator gives each
        prompt of a batch the text it would get alone.
        """
        eos = self.tokenizer.decode([self.eot_token_id])
        groups = {}  # settings -> [(request index, context)]
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            options = normalize_gen_kwargs(dict(gen_kwargs), self._max_gen_toks)
            until = tuple(handle_stop_sequences(options.pop("until", None), eos=eos))
            new_tokens = int(options.pop("max_gen_toks"))
            _check_request(getattr(request, "task_name", None), context, new_tokens, self.max_length)
            temperature = float(options.get("temperature", 0.0) or 0.0)
            do_sample = bool(options.get("do_sample")) and temperature > 0
            groups.setdefault((until, new_tokens, do_sample, temperature), []).append((index, context))
        outputs = [None] * len(requests)
        for (until, new_tokens, do_sample, temperature), items in groups.items():
            room = self.max_length - new_tokens
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                contexts = [self._fit_context(context, room) for _, context in batch]
                samples = self.generator(
                    contexts,
                    max_new_tokens=new_tokens,
                    do_sample=do_sample,
                    temperature=temperature if do_sample else 1.0,
                    seed=0,
                )
                for (index, _), sample in zip(batch, samples):
                    outputs[index] = _cut(sample.completion, until)
        return outputs

    def _fit_context(self, context: str, room: int) -> str:
        """The end of a context too long for the window, as the harness's own models keep it."""
        ids = self.tok_encode(context)
        return self.tokenizer.decode(ids[-room:]) if len(ids) > room else context


def _check_request(task: str | None, context: str, new_tokens: int, max_length: int) -> None:
    """A generation request the model cannot answer, named by its task and the task's setting."""
    if new_tokens >= max_length:
        raise ConfigError(
            "--tasks",
            f"task {task!r} asks for {new_tokens} new tokens (max_gen_toks), and the model holds {max_length} "
            "positions; lower max_gen_toks in its generation_kwargs",
        )
    if not context:
        raise ConfigError("--tasks", f"task {task!r} renders an empty prompt (doc_to_text); a generation needs one")


def _cut(text: str, stops) -> str:
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


def _scorer(model):
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec, spec])
    def score(ids, mask, targets):
        logits = tf.cast(model(input_ids=ids, attention_mask=mask, training=False).logits, tf.float32)
        log_probs = tf.nn.log_softmax(logits)
        scored = targets >= 0
        picked = tf.gather(log_probs, tf.maximum(targets, 0), batch_dims=2)
        total = tf.reduce_sum(tf.where(scored, picked, 0.0), axis=1)
        matches = tf.argmax(logits, axis=-1, output_type=tf.int32) == targets
        return total, tf.reduce_all(tf.logical_or(tf.logical_not(scored), matches), axis=1)

    return score


def main() -> None:
    """The harness's command line, with the `tfclm` model type registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
