"""Llama, Qwen 2 and Qwen 3 as transformers TF (Keras 2) causal LMs, on transformers' own config classes.

One decoder serves the three: grouped-query attention with rotary embeddings
(`tfclm.model.llama.rope`), RMSNorm before attention and before the gated MLP,
and each family's own switches (`Switches`): q/k/v biases (Qwen 2, Llama's
`attention_bias`), an o_proj bias, MLP biases, per-head q/k RMSNorm (Qwen 3),
a tied or untied head. Layer and weight names are PyTorch's
(`model.layers.0.self_attn.q_proj.weight`), so transformers' TF
`from_pretrained` reads the Hub's PyTorch safetensors one to one, without
PyTorch, and `tfclm.auto` registers the classes with `TFAutoModelForCausalLM`
and `TFAutoModel` (after `import tfclm`, on their first use).

Attention scores, the mask and the softmax are float32 whatever the compute
dtype, so bf16 training sees no overflowing mask (transformers' TF Mistral
builds its mask in the compute dtype and fails there).
"""

import math
from dataclasses import dataclass

from transformers import LlamaConfig, Qwen2Config, Qwen3Config
from transformers.modeling_tf_outputs import TFBaseModelOutputWithPast, TFCausalLMOutputWithPast
from transformers.modeling_tf_utils import TFCausalLanguageModelingLoss, TFPreTrainedModel, unpack_inputs

from tfclm.backend import keras, tf
from tfclm.model.llama import rope

MASKED = -1e30  # added to a score that must not count; float32, so any compute dtype is safe


@dataclass(frozen=True)
class Switches:
    """What one family's decoder has beyond Llama's plain form."""

    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False


def switches(config) -> Switches:
    """The family's switches, after refusing what the TF classes do not implement."""
    rope.check(config)
    if getattr(config, "use_sliding_window", False):
        raise ValueError(f"use_sliding_window: tfclm's TF {config.model_type} attends to the whole context only")
    if getattr(config, "pretraining_tp", 1) != 1:
        raise ValueError("pretraining_tp: tfclm's TF llama computes the projections whole; set it to 1")
    bias = bool(getattr(config, "attention_bias", False))
    if config.model_type == "qwen2":
        return Switches(qkv_bias=True)
    if config.model_type == "qwen3":
        return Switches(qkv_bias=bias, o_bias=bias, qk_norm=True)
    return Switches(qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(config, "mlp_bias", False)))


def build_children(layer, *children) -> None:
    """Build each (sublayer, input shape) in its own name scope, once: the variables get PyTorch's module paths
    (`model/layers.0/self_attn/q_proj/kernel`) without a forward pass, as transformers' TF models build."""
    if layer.built:
        return
    layer.built = True
    for child, shape in children:
        if child is not None:
            with tf.name_scope(child.name):
                child.build(shape)


def initializer(config):
    """PyTorch's: normal(0, initializer_range) for the embeddings and every projection."""
    return keras.initializers.RandomNormal(stddev=getattr(config, "initializer_range", 0.02))


def dense_of(config):
    def dense(units, **kwargs):
        return keras.layers.Dense(units, kernel_initializer=initializer(config), **kwargs)

    return dense


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class TFLlamaRMSNorm(keras.layers.Layer):
    """x / rms(x) * weight, the mean square taken in float32."""

    def __init__(self, size: int, eps: float, **kwargs):
        super().__init__(**kwargs)
        self.size, self.eps = size, eps

    def build(self, input_shape=None):
        self.weight = self.add_weight(name="weight", shape=(self.size,), initializer="ones")
        super().build(input_shape)

    def call(self, hidden):
        dtype = hidden.dtype
        wide = tf.cast(hidden, tf.float32)
        wide = wide * tf.math.rsqrt(tf.reduce_mean(tf.square(wide), axis=-1, keepdims=True) + self.eps)
        return tf.cast(self.weight, dtype) * tf.cast(wide, dtype)


def rotate(x, cos, sin):
    """x [batch, length, heads, dim] turned by the angles whose cos and sin are [batch, length, 1, dim]."""
    half = x.shape[-1] // 2
    return x * cos + tf.concat([-x[..., half:], x[..., :half]], axis=-1) * sin


class TFLlamaAttention(keras.layers.Layer):
    def __init__(self, config, flags: Switches, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.kv_heads, self.dim = config.num_attention_heads, config.num_key_value_heads, head_dim(config)
        dense = dense_of(config)
        self.q_proj = dense(self.heads * self.dim, use_bias=flags.qkv_bias, name="q_proj")
        self.k_proj = dense(self.kv_heads * self.dim, use_bias=flags.qkv_bias, name="k_proj")
        self.v_proj = dense(self.kv_heads * self.dim, use_bias=flags.qkv_bias, name="v_proj")
        self.o_proj = dense(config.hidden_size, use_bias=flags.o_bias, name="o_proj")
        if flags.qk_norm:
            self.q_norm = TFLlamaRMSNorm(self.dim, config.rms_norm_eps, name="q_norm")
            self.k_norm = TFLlamaRMSNorm(self.dim, config.rms_norm_eps, name="k_norm")
        self.qk_norm, self.hidden_size = flags.qk_norm, config.hidden_size
        self.dropout = keras.layers.Dropout(getattr(config, "attention_dropout", 0.0))

    def build(self, input_shape=None):
        width = (None, None, self.hidden_size)
        norms = [(self.q_norm, None), (self.k_norm, None)] if self.qk_norm else []
        projections = [(getattr(self, name), width) for name in ("q_proj", "k_proj", "v_proj")]
        build_children(self, *projections, (self.o_proj, (None, None, self.heads * self.dim)), *norms)

    def call(self, hidden, cos, sin, mask, past=None, training=False):
        batch, length = tf.shape(hidden)[0], tf.shape(hidden)[1]

        def heads(x, count):
            return tf.reshape(x, [batch, length, count, self.dim])

        q, k = heads(self.q_proj(hidden), self.heads), heads(self.k_proj(hidden), self.kv_heads)
        v = heads(self.v_proj(hidden), self.kv_heads)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if past is not None:  # the cache holds [batch, kv heads, length, dim], as transformers' TF models keep it
            k = tf.concat([tf.transpose(past[0], [0, 2, 1, 3]), k], axis=1)
            v = tf.concat([tf.transpose(past[1], [0, 2, 1, 3]), v], axis=1)
        present = (tf.transpose(k, [0, 2, 1, 3]), tf.transpose(v, [0, 2, 1, 3]))
        # Grouped queries: [batch, q length, kv heads, group, dim] against each kv head's keys.
        group = self.heads // self.kv_heads
        q = tf.reshape(q, [batch, length, self.kv_heads, group, self.dim])
        scores = tf.cast(tf.einsum("bqhgd,bkhd->bhgqk", q, k), tf.float32) / math.sqrt(self.dim)
        weights = tf.nn.softmax(scores + mask[:, :, None], axis=-1)
        weights = self.dropout(tf.cast(weights, v.dtype), training=training)
        out = tf.einsum("bhgqk,bkhd->bqhgd", weights, v)
        return self.o_proj(tf.reshape(out, [batch, length, self.heads * self.dim])), present


class TFLlamaMLP(keras.layers.Layer):
    def __init__(self, config, flags: Switches, **kwargs):
        super().__init__(**kwargs)
        from transformers.activations_tf import get_tf_activation

        width, bias, dense = config.intermediate_size, flags.mlp_bias, dense_of(config)
        self.gate_proj = dense(width, use_bias=bias, name="gate_proj")
        self.up_proj = dense(width, use_bias=bias, name="up_proj")
        self.down_proj = dense(config.hidden_size, use_bias=bias, name="down_proj")
        self.act_fn = get_tf_activation(config.hidden_act)
        self.sizes = (config.hidden_size, width)

    def build(self, input_shape=None):
        hidden, wide = ((None, None, size) for size in self.sizes)
        build_children(self, (self.gate_proj, hidden), (self.up_proj, hidden), (self.down_proj, wide))

    def call(self, hidden):
        return self.down_proj(self.act_fn(self.gate_proj(hidden)) * self.up_proj(hidden))


class TFLlamaDecoderLayer(keras.layers.Layer):
    def __init__(self, config, flags: Switches, **kwargs):
        super().__init__(**kwargs)
        self.input_layernorm = TFLlamaRMSNorm(config.hidden_size, config.rms_norm_eps, name="input_layernorm")
        self.self_attn = TFLlamaAttention(config, flags, name="self_attn")
        self.post_attention_layernorm = TFLlamaRMSNorm(
            config.hidden_size, config.rms_norm_eps, name="post_attention_layernorm"
        )
        self.mlp = TFLlamaMLP(config, flags, name="mlp")

    def build(self, input_shape=None):
        parts = (self.input_layernorm, self.self_attn, self.post_attention_layernorm, self.mlp)
        build_children(self, *((part, None) for part in parts))

    def call(self, hidden_states, cos, sin, mask, past=None, training=False):
        attended, present = self.self_attn(
            self.input_layernorm(hidden_states), cos, sin, mask, past=past, training=training
        )
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states)), present


class TFLlamaMainLayer(keras.layers.Layer):
    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        flags = switches(config)
        self.embed_tokens = keras.layers.Embedding(
            config.vocab_size, config.hidden_size, embeddings_initializer=initializer(config), name="embed_tokens"
        )
        self.layers = [TFLlamaDecoderLayer(config, flags, name=f"layers.{i}") for i in range(config.num_hidden_layers)]
        self.norm = TFLlamaRMSNorm(config.hidden_size, config.rms_norm_eps, name="norm")
        self.inverse_frequencies = rope.inverse_frequencies(config, head_dim(config))

    def build(self, input_shape=None):
        build_children(self, (self.embed_tokens, None), *((layer, None) for layer in self.layers), (self.norm, None))

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def angles(self, positions, dtype):
        """cos and sin [batch, length, 1, dim] of the positions, computed in float32 as PyTorch's are."""
        turned = tf.cast(positions, tf.float32)[..., None] * tf.constant(self.inverse_frequencies)
        both = tf.concat([turned, turned], axis=-1)[:, :, None, :]
        return tf.cast(tf.cos(both), dtype), tf.cast(tf.sin(both), dtype)

    def call(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, training=False):
        batch, length = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        cached = 0 if past_key_values is None else tf.shape(past_key_values[0][0])[2]
        if position_ids is None:
            position_ids = tf.broadcast_to(tf.range(cached, cached + length)[None], [batch, length])
        if attention_mask is None:
            attention_mask = tf.ones([batch, cached + length], tf.int32)
        hidden = self.embed_tokens(input_ids)
        cos, sin = self.angles(position_ids, hidden.dtype)
        mask = causal_mask(attention_mask, length, cached)
        presents = []
        for index, layer in enumerate(self.layers):
            past = None if past_key_values is None else past_key_values[index]
            hidden, present = layer(hidden, cos, sin, mask, past=past, training=training)
            presents.append(present)
        return self.norm(hidden), tuple(presents)


def causal_mask(attention_mask, length, cached):
    """float32 [batch, 1, q length, kv length]: 0 where a query may look, MASKED where not (later positions,
    padding)."""
    total = cached + length
    query = tf.range(cached, total)[:, None]
    allowed = tf.range(total)[None, :] <= query
    padding = tf.cast(attention_mask[:, None, None, :total], tf.bool)
    return tf.where(tf.logical_and(allowed[None, None], padding), 0.0, MASKED)


class TFLlamaPreTrainedModel(TFPreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"


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
            return tf.matmul(hidden, tf.cast(self.model.embed_tokens.embeddings, hidden.dtype), transpose_b=True)
        return self.lm_head(hidden)

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
CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}


def _classes(config_class, base, causal):
    """The model_type's own TF classes (transformers looks a class's config_class up when loading)."""
    name = config_class.model_type.capitalize()
    model = type(f"TF{name}Model", (base,), {"config_class": config_class, "__module__": __name__})
    lm = type(f"TF{name}ForCausalLM", (causal,), {"config_class": config_class, "__module__": __name__})
    return model, lm


CLASSES = {
    model_type: (TFLlamaModel, TFLlamaForCausalLM)
    if model_type == "llama"
    else _classes(config_class, TFLlamaModel, TFLlamaForCausalLM)
    for model_type, config_class in CONFIGS.items()
}
