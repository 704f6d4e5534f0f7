"""Llama, Mistral, Qwen 2, Qwen 3, Gemma, Gemma 2, Gemma 3 (text), Phi-3, OLMo 2 and Granite as transformers TF
(Keras 2) causal LMs, on transformers' own config classes.

One decoder serves them all: grouped-query attention with rotary embeddings
(`tfclm.model.llama.rope`), RMSNorm before attention and before the gated MLP,
and each family's own switches (`Switches`): q/k/v biases (Qwen 2, Llama's
`attention_bias`), an o_proj bias, MLP biases, per-head q/k RMSNorm (Qwen 3,
Gemma 3), Gemma's RMSNorm of 1 + weight and embeddings scaled by sqrt(width),
sliding windows on every layer (Mistral, Phi-3) or on a pattern of them
(Gemma 2 and 3, whose sliding layers Gemma 3 turns by a rotation of their
own), Gemma 2's soft-capped scores and logits and its norms around each
branch, Phi-3's fused projections, OLMo 2's norms on the branches' outputs, Granite's multipliers, a tied or
untied head. Layer and weight names are PyTorch's
(`model.layers.0.self_attn.q_proj.weight`), so `from_pretrained` reads the
Hub's PyTorch safetensors one to one, without PyTorch (through
`tfclm.model.streaming`, a slice at a time into the variables), and
`tfclm.auto` registers the classes with `TFAutoModelForCausalLM` and
`TFAutoModel` (after `import tfclm`, on their first use).

Attention scores, the mask and the softmax are float32 whatever the compute
dtype, so bf16 training sees no overflowing mask (transformers' TF Mistral
builds its mask in the compute dtype and fails there).
"""

from transformers import (
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)
from transformers.modeling_tf_outputs import TFBaseModelOutputWithPast, TFCausalLMOutputWithPast
from transformers.modeling_tf_utils import TFCausalLanguageModelingLoss, TFPreTrainedModel, unpack_inputs

from tfclm.backend import keras, tf
from tfclm.model import streaming
from tfclm.model.llama import rope
from tfclm.model.llama.layers import (
    TFLlamaDecoderLayer,
    build_children,
    causal_mask,
    dense_of,
    head_dim,
    initializer,
    rms_norm,
    switches,
)


class TFLlamaMainLayer(keras.layers.Layer):
    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        flags = self.flags = switches(config)
        self.embed_tokens = keras.layers.Embedding(
            config.vocab_size, config.hidden_size, embeddings_initializer=initializer(config), name="embed_tokens"
        )
        self.layers = [TFLlamaDecoderLayer(config, flags, name=f"layers.{i}") for i in range(config.num_hidden_layers)]
        self.norm = rms_norm(config, flags, "norm")
        # By whether a layer slides: Gemma 3's sliding layers turn by a rotation of their own.
        self.rotations = {False: rope.rotary(config, head_dim(config))}
        if flags.local_rotation:
            self.rotations[True] = rope.rotary(config, head_dim(config), "sliding_attention")

    def build(self, input_shape=None):
        build_children(self, (self.embed_tokens, None), *((layer, None) for layer in self.layers), (self.norm, None))

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @staticmethod
    def angles(positions, dtype, rotation):
        """cos and sin [batch, length, 1, rotary dim] of the positions, computed in float32 as PyTorch's are."""
        inverse = tf.constant(rotation.inverse)
        if rotation.long is not None:  # LongRoPE: the long factors once the batch reaches past the original context
            inverse = tf.where(tf.reduce_max(positions) + 1 > rotation.switch_after, rotation.long, inverse)
        turned = tf.cast(positions, tf.float32)[..., None] * inverse
        both = tf.concat([turned, turned], axis=-1)[:, :, None, :]
        cos, sin = tf.cos(both), tf.sin(both)
        if rotation.scale != 1.0:
            cos, sin = cos * rotation.scale, sin * rotation.scale
        return tf.cast(cos, dtype), tf.cast(sin, dtype)

    def call(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, training=False):
        batch, length = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        cached = 0 if past_key_values is None else tf.shape(past_key_values[0][0])[2]
        if position_ids is None:
            position_ids = tf.broadcast_to(tf.range(cached, cached + length)[None], [batch, length])
        if attention_mask is None:
            attention_mask = tf.ones([batch, cached + length], tf.int32)
        hidden = self.embed_tokens(input_ids)
        if self.flags.gemma:  # the scale in the compute dtype, rounded as PyTorch's Gemma rounds it
            hidden = hidden * tf.cast(self.config.hidden_size**0.5, hidden.dtype)
        if self.flags.embedding_multiplier != 1.0:
            hidden = hidden * tf.cast(self.flags.embedding_multiplier, hidden.dtype)
        angles = {sliding: self.angles(position_ids, hidden.dtype, turn) for sliding, turn in self.rotations.items()}
        masks = {sliding: causal_mask(attention_mask, length, cached, self.flags.window if sliding else None)
                 for sliding in {self.flags.slides(index) for index in range(len(self.layers))}}  # fmt: skip
        presents = []
        for index, layer in enumerate(self.layers):
            past = None if past_key_values is None else past_key_values[index]
            sliding = self.flags.slides(index)
            cos, sin = angles.get(sliding, angles[False])
            hidden, present = layer(hidden, cos, sin, masks[sliding], past=past, training=training)
            presents.append(present)
        return self.norm(hidden), tuple(presents)


class TFLlamaPreTrainedModel(TFPreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, with the Hub's PyTorch safetensors read by `tfclm.model.streaming`: a
        slice at a time into the variables, so loading takes little more memory than the weights themselves."""
        with streaming.streamed(pretrained_model_name_or_path, kwargs):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)


class TFLlamaModel(TFLlamaPreTrainedModel):
    def __init__(self, config, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.model = TFLlamaMainLayer(config, name="model")

    def build(self, input_shape=None):
        build_children(self, (self.model, None))

    @unpack_inputs
    def call(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        training=False,
    ):
        hidden, presents = self.model(input_ids, attention_mask, position_ids, past_key_values, training=training)
        return TFBaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=presents if use_cache else None)


class TFLlamaForCausalLM(TFLlamaPreTrainedModel, TFCausalLanguageModelingLoss):
    """A Llama-style causal LM; the head is the input embedding matrix when `tie_word_embeddings`.

    >>> import numpy as np
    >>> from transformers import LlamaConfig
    >>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                      num_attention_heads=4, num_key_value_heads=2)
    >>> model = TFLlamaForCausalLM(config)
    >>> model(input_ids=np.array([[1, 2, 3]])).logits.shape
    TensorShape([1, 3, 64])
    """

    def __init__(self, config, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.model = TFLlamaMainLayer(config, name="model")
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = dense_of(config)(config.vocab_size, use_bias=False, name="lm_head")

    def build(self, input_shape=None):
        head = None if self.tied else (self.lm_head, (None, None, self.config.hidden_size))
        build_children(self, (self.model, None), head or (None, None))

    def get_output_embeddings(self):
        return self.model.embed_tokens if self.tied else self.lm_head

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def head(self, hidden):
        if self.tied:
            logits = tf.matmul(hidden, tf.cast(self.model.embed_tokens.embeddings, hidden.dtype), transpose_b=True)
        else:
            logits = self.lm_head(hidden)
        flags = self.model.flags
        if flags.logits_scaling != 1.0:
            logits = logits / tf.cast(flags.logits_scaling, logits.dtype)
        return logits if not flags.logit_softcap else tf.tanh(logits / flags.logit_softcap) * flags.logit_softcap

    @unpack_inputs
    def call(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        training=False,
    ):
        hidden, presents = self.model(input_ids, attention_mask, position_ids, past_key_values, training=training)
        logits = self.head(hidden)
        loss = None
        if labels is not None:
            loss = self.hf_compute_loss(labels[:, 1:], logits[:, :-1])
        return TFCausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=presents if use_cache else None)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
        """Positions from the mask (a left-padded prompt's first token is at 0); with a cache, the last token."""
        position_ids = kwargs.get("position_ids")
        if attention_mask is not None and position_ids is None:
            position_ids = tf.math.cumsum(attention_mask, axis=-1, exclusive=True)
        if past_key_values:
            input_ids = input_ids[:, -1:]
            position_ids = None if position_ids is None else position_ids[:, -1:]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "past_key_values": past_key_values,
            "use_cache": True,
        }


# transformers' config classes of the families these classes implement, by model_type.
CONFIGS = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,  # in place of transformers' TF Mistral, whose mask fails under bf16
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "gemma": GemmaConfig,
    "gemma2": Gemma2Config,
    "gemma3_text": Gemma3TextConfig,  # Gemma 3's text-only checkpoints (1B); the larger ones hold a vision tower
    "phi3": Phi3Config,
    "olmo2": Olmo2Config,
    "granite": GraniteConfig,
}


def _classes(config_class, base, causal):
    """The model_type's own TF classes (transformers looks a class's config_class up when loading)."""
    name = "".join(part.capitalize() for part in config_class.model_type.split("_"))
    model = type(f"TF{name}Model", (base,), {"config_class": config_class, "__module__": __name__})
    lm = type(f"TF{name}ForCausalLM", (causal,), {"config_class": config_class, "__module__": __name__})
    return model, lm


CLASSES = {
    model_type: (TFLlamaModel, TFLlamaForCausalLM)
    if model_type == "llama"
    else _classes(config_class, TFLlamaModel, TFLlamaForCausalLM)
    for model_type, config_class in CONFIGS.items()
}
