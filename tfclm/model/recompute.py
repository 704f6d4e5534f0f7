"""Activation recomputation: each transformer block keeps only its input for the backward pass.

`train.recompute: blocks` wraps the `call` of every block the family table
names (`Family.blocks`) in `tf.recompute_grad`: the forward pass keeps a
block's input and drops what is inside it (attention scores, the MLP's wide
activations), and the backward pass runs the block again to get them. Memory
for activations falls from every layer's insides to one block's, for about a
third more compute.

Only the training step recomputes: generation needs the blocks' caches, which
a recomputed block does not return, so the wrapper recomputes only inside
`recomputing()`, which the trainer's train step enters. A block that drops
out draws the same masks again when it is recomputed: its dropout is seeded
by the step and by the call's place in it (`tfclm.model.dropout`), and the
recomputation rewinds to the block's first call.
"""

from tfclm.backend import keras_call_context, tf
from tfclm.model import dropout
from tfclm.model.families import check, family
from tfclm.model.step_flag import StepFlag

# While tracing a train step: blocks wrapped by `recompute_blocks` recompute in the backward pass.
recomputing = StepFlag()


def blocks_of(lm) -> list:
    row = check(lm.config.model_type, "model", recompute=True, trust_remote_code=True)
    found = lm
    for name in row.blocks.split("."):
        found = getattr(found, name)
    return list(found)


def recompute_blocks(lm) -> int:
    """Wrap every block of `lm`; returns how many. The hidden state in is the only tensor differentiated: the
    attention mask and the rest are inputs without gradients, and the weights are read inside."""
    row = family(lm.config)
    blocks = blocks_of(lm)
    for block in blocks:
        block.call = _recomputed(block.call, row.block_outputs)
    return len(blocks)


def _recomputed(call, outputs: int):
    def wrapped(*args, **kwargs):
        if not recomputing.on:
            return call(*args, **kwargs)
        by_name = "hidden_states" in kwargs
        hidden = kwargs.pop("hidden_states") if by_name else args[0]
        rest = args if by_name else args[1:]
        first_draw = dropout.position()
        # Inner layers called without `training` take Keras' call context's, which is gone when the backward
        # pass recomputes the block: it is entered again there, so that dropout drops out there too.
        context = keras_call_context()
        entered = (context.layer, context.build_graph, dict(context.call_context_args), context.saving)

        @tf.recompute_grad
        def block(states):
            dropout.rewind(first_draw)  # the forward pass's masks, again in the backward pass
            layer, build_graph, context_args, saving = entered
            with keras_call_context().enter(layer, states, build_graph, context_args, saving):
                if by_name:
                    return call(*rest, **kwargs, hidden_states=states)[0]
                return call(states, *rest, **kwargs)[0]

        # The block's caches and attention maps are not kept; training asks for neither.
        return (block(hidden),) + (None,) * (outputs - 1)

    return wrapped
