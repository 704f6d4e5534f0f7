"""The layers of the Llama-style decoder: RMSNorm, grouped-query attention with rotary embeddings, the gated
MLP, a decoder block, the causal mask, and each family's switches (`tfclm.model.llama.modeling` puts them
together into transformers TF models)."""

import math
from dataclasses import dataclass

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
    # Gemma: RMSNorm weights stored as an offset from 1 (and applied in float32), embeddings scaled by sqrt(width).
    gemma: bool = False
    window: int | None = None  # Mistral's sliding window: a query sees the last `window` positions, itself included
    # Phi-3: q, k and v in one projection (`qkv_proj`), the gate and up ones in one (`gate_up_proj`, gate first),
    # and dropout on each block's two residual branches.
    fused: bool = False
    residual_dropout: float = 0.0
    # With a window, whether each layer slides; None: every layer does.
    sliding_layers: tuple[bool, ...] | None = None
    # Gemma 2: scores scaled by query_pre_attn_scalar ** -0.5 (not head_dim's), scores and logits soft-capped by
    # tanh, and norms around each branch's output as well as its input (the "sandwich").
    query_scale: float | None = None
    attention_softcap: float | None = None
    logit_softcap: float | None = None
    sandwich: bool = False
    # Gemma 3: the sliding layers turn by a rotation of their own (rope.rotary's "sliding_attention").
    local_rotation: bool = False
    # OLMo 2: q/k RMSNorm over each whole projection (not per head), and norms on each branch's output only.
    flat_qk_norm: bool = False
    post_norm: bool = False
    # Granite: embeddings, each branch and the scores multiplied, the logits divided.
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0

    def slides(self, index: int) -> bool:
        """Whether layer `index` attends through the sliding window."""
        if self.window is None:
            return False
        return self.sliding_layers is None or self.sliding_layers[index]


def sliding_layers(config, pattern: int = 0, first: int | None = None) -> tuple[bool, ...] | None:
    """Which layers slide: v5's (and 4.53's) `layer_types` where the config has them, else every layer but each
    `pattern`-th (4.x's Gemma: sliding_window_pattern, Gemma 2's 2), or those from `first` on (Qwen's
    max_window_layers, as v5 and Qwen's code take it; 4.52's eager attention windows every layer); None: every
    layer."""
    types = getattr(config, "layer_types", None)
    if types:
        kinds = ("sliding_attention", "full_attention")
        if len(types) != config.num_hidden_layers or any(t not in kinds for t in types):
            raise ValueError(
                f"layer_types: one of {', '.join(kinds)} for each of the {config.num_hidden_layers} layers, not {types}"
            )
        return tuple(t == "sliding_attention" for t in types)
    if pattern:
        return tuple((index + 1) % pattern != 0 for index in range(config.num_hidden_layers))
    if first is not None:
        return tuple(index >= first for index in range(config.num_hidden_layers))
    return None


# PyTorch's names of activations whose TF names differ: gelu_pytorch_tanh is transformers' TF gelu_new.
ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_new"}


def switches(config) -> Switches:
    """The family's switches, after refusing what the TF classes do not implement."""
    rope.check(config)
    if getattr(config, "pretraining_tp", 1) != 1:
        raise ValueError("pretraining_tp: tfclm's TF llama computes the projections whole; set it to 1")
    bias = bool(getattr(config, "attention_bias", False))
    if config.model_type in ("qwen2", "qwen3"):
        window = config.sliding_window if getattr(config, "use_sliding_window", False) else None
        qwen3 = config.model_type == "qwen3"
        return Switches(
            qkv_bias=bias if qwen3 else True,
            o_bias=bias and qwen3,
            qk_norm=qwen3,
            window=window,
            sliding_layers=sliding_layers(config, first=config.max_window_layers),
        )
    if config.model_type == "gemma":
        return Switches(qkv_bias=bias, o_bias=bias, gemma=True)
    if config.model_type == "mistral":
        return Switches(window=getattr(config, "sliding_window", None), sliding_layers=sliding_layers(config))
    if config.model_type in ("gemma2", "gemma3_text"):  # Gemma 3 adds q/k norms and its sliding layers' rotation
        gemma3 = config.model_type == "gemma3_text"
        return Switches(
            qkv_bias=bias,
            o_bias=bias,
            gemma=True,
            sandwich=True,
            qk_norm=gemma3,
            window=config.sliding_window,
            sliding_layers=sliding_layers(config, config.sliding_window_pattern if gemma3 else 2),
            query_scale=config.query_pre_attn_scalar,
            attention_softcap=config.attn_logit_softcapping,
            logit_softcap=config.final_logit_softcapping,
            local_rotation=gemma3,
        )
    if config.model_type == "olmo2":
        return Switches(qkv_bias=bias, o_bias=bias, qk_norm=True, flat_qk_norm=True, post_norm=True)
    if config.model_type == "granite":
        return Switches(
            qkv_bias=bias,
            o_bias=bias,
            mlp_bias=bool(config.mlp_bias),
            embedding_multiplier=config.embedding_multiplier,
            residual_multiplier=config.residual_multiplier,
            attention_multiplier=config.attention_multiplier,
            logits_scaling=config.logits_scaling,
        )
    if config.model_type == "phi3":
        return Switches(fused=True, window=config.sliding_window, residual_dropout=config.resid_pdrop)
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
    """x / rms(x) * weight, the mean square taken in float32; with `offset` (Gemma's), x / rms(x) * (1 + weight),
    all in float32 before the cast back, as PyTorch's Gemma computes it."""

    def __init__(self, size: int, eps: float, offset: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.size, self.eps, self.offset = size, eps, offset

    def build(self, input_shape=None):
        start = "zeros" if self.offset else "ones"
        self.weight = self.add_weight(name="weight", shape=(self.size,), initializer=start)
        super().build(input_shape)

    def call(self, hidden):
        dtype = hidden.dtype
        wide = tf.cast(hidden, tf.float32)
        wide = wide * tf.math.rsqrt(tf.reduce_mean(tf.square(wide), axis=-1, keepdims=True) + self.eps)
        if self.offset:
            return tf.cast(wide * (1.0 + tf.cast(self.weight, tf.float32)), dtype)
        return tf.cast(self.weight, dtype) * tf.cast(wide, dtype)


def rms_norm(config, flags: Switches, name: str, size: int | None = None) -> TFLlamaRMSNorm:
    return TFLlamaRMSNorm(size or config.hidden_size, config.rms_norm_eps, offset=flags.gemma, name=name)


def rotate(x, cos, sin):
    """x [batch, length, heads, dim] turned by the angles whose cos and sin are [batch, length, 1, rotary dim]:
    the first rotary dim channels turn, the rest pass (a `partial_rotary_factor` below 1)."""
    rotary = cos.shape[-1]
    turning, passing = x[..., :rotary], x[..., rotary:]
    half = rotary // 2
    turned = turning * cos + tf.concat([-turning[..., half:], turning[..., :half]], axis=-1) * sin
    return turned if rotary == x.shape[-1] else tf.concat([turned, passing], axis=-1)


class TFLlamaAttention(keras.layers.Layer):
    def __init__(self, config, flags: Switches, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.kv_heads, self.dim = config.num_attention_heads, config.num_key_value_heads, head_dim(config)
        dense = dense_of(config)
        self.fused = flags.fused
        if flags.fused:
            self.qkv_proj = dense((self.heads + 2 * self.kv_heads) * self.dim, use_bias=False, name="qkv_proj")
        else:
            self.q_proj = dense(self.heads * self.dim, use_bias=flags.qkv_bias, name="q_proj")
            self.k_proj = dense(self.kv_heads * self.dim, use_bias=flags.qkv_bias, name="k_proj")
            self.v_proj = dense(self.kv_heads * self.dim, use_bias=flags.qkv_bias, name="v_proj")
        self.o_proj = dense(config.hidden_size, use_bias=flags.o_bias, name="o_proj")
        self.flat_qk_norm = flags.flat_qk_norm
        if flags.qk_norm:
            q_width, k_width = (
                (self.heads * self.dim, self.kv_heads * self.dim) if flags.flat_qk_norm else [self.dim] * 2
            )
            self.q_norm = rms_norm(config, flags, "q_norm", q_width)
            self.k_norm = rms_norm(config, flags, "k_norm", k_width)
        self.qk_norm, self.hidden_size = flags.qk_norm, config.hidden_size
        self.score_scale, self.softcap = math.sqrt(flags.query_scale or self.dim), flags.attention_softcap
        self.multiplier = flags.attention_multiplier
        self.dropout = keras.layers.Dropout(getattr(config, "attention_dropout", 0.0))

    def build(self, input_shape=None):
        width = (None, None, self.hidden_size)
        norms = [(self.q_norm, None), (self.k_norm, None)] if self.qk_norm else []
        names = ("qkv_proj",) if self.fused else ("q_proj", "k_proj", "v_proj")
        projections = [(getattr(self, name), width) for name in names]
        build_children(self, *projections, (self.o_proj, (None, None, self.heads * self.dim)), *norms)

    def call(self, hidden, cos, sin, mask, past=None, training=False):
        batch, length = tf.shape(hidden)[0], tf.shape(hidden)[1]

        def heads(x, count):
            return tf.reshape(x, [batch, length, count, self.dim])

        if self.fused:
            q, k, v = tf.split(self.qkv_proj(hidden), [self.heads * self.dim, *[self.kv_heads * self.dim] * 2], -1)
        else:
            q, k, v = self.q_proj(hidden), self.k_proj(hidden), self.v_proj(hidden)
        if self.flat_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = heads(q, self.heads), heads(k, self.kv_heads), heads(v, self.kv_heads)
        if self.qk_norm and not self.flat_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if past is not None:  # the cache holds [batch, kv heads, length, dim], as transformers' TF models keep it
            k = tf.concat([tf.transpose(past[0], [0, 2, 1, 3]), k], axis=1)
            v = tf.concat([tf.transpose(past[1], [0, 2, 1, 3]), v], axis=1)
        present = (tf.transpose(k, [0, 2, 1, 3]), tf.transpose(v, [0, 2, 1, 3]))
        # Grouped queries: [batch, q length, kv heads, group, dim] against each kv head's keys.
        group = self.heads // self.kv_heads
        q = tf.reshape(q, [batch, length, self.kv_heads, group, self.dim])
        scores = tf.cast(tf.einsum("bqhgd,bkhd->bhgqk", q, k), tf.float32)
        scores = scores * self.multiplier if self.multiplier is not None else scores / self.score_scale
        if self.softcap:
            scores = tf.tanh(scores / self.softcap) * self.softcap
        weights = tf.nn.softmax(scores + mask[:, :, None], axis=-1)
        weights = self.dropout(tf.cast(weights, v.dtype), training=training)
        out = tf.einsum("bhgqk,bkhd->bqhgd", weights, v)
        return self.o_proj(tf.reshape(out, [batch, length, self.heads * self.dim])), present


class TFLlamaMLP(keras.layers.Layer):
    def __init__(self, config, flags: Switches, **kwargs):
        super().__init__(**kwargs)
        from transformers.activations_tf import get_tf_activation

        width, bias, dense = config.intermediate_size, flags.mlp_bias, dense_of(config)
        self.fused = flags.fused
        if flags.fused:
            self.gate_up_proj = dense(2 * width, use_bias=bias, name="gate_up_proj")
        else:
            self.gate_proj = dense(width, use_bias=bias, name="gate_proj")
            self.up_proj = dense(width, use_bias=bias, name="up_proj")
        self.down_proj = dense(config.hidden_size, use_bias=bias, name="down_proj")
        # Gemma 2 and 3 name their activation `hidden_activation`; Gemma's config has both, its MLP takes hidden_act.
        act = config.hidden_activation if config.model_type in ("gemma2", "gemma3_text") else config.hidden_act
        self.act_fn = get_tf_activation(ACTIVATIONS.get(act, act))
        self.sizes = (config.hidden_size, width)

    def build(self, input_shape=None):
        hidden, wide = ((None, None, size) for size in self.sizes)
        inputs = [(self.gate_up_proj, hidden)] if self.fused else [(self.gate_proj, hidden), (self.up_proj, hidden)]
        build_children(self, *inputs, (self.down_proj, wide))

    def call(self, hidden):
        if self.fused:
            gate, up = tf.split(self.gate_up_proj(hidden), 2, axis=-1)
        else:
            gate, up = self.gate_proj(hidden), self.up_proj(hidden)
        return self.down_proj(self.act_fn(gate) * up)


class TFLlamaDecoderLayer(keras.layers.Layer):
    """Norm, attention, norm, MLP, each branch added back (scaled by Granite's residual_multiplier); Gemma 2 and 3
    also norm each branch's output (`sandwich`), OLMo 2 norms only the outputs (`post_norm`)."""

    def __init__(self, config, flags: Switches, **kwargs):
        super().__init__(**kwargs)
        self.sandwich, self.post_norm, self.multiplier = flags.sandwich, flags.post_norm, flags.residual_multiplier
        norms = ["post_attention_layernorm"]  # Llama's is the MLP's input norm; the others' the attention output's
        norms += [] if flags.post_norm else ["input_layernorm"]
        norms += ["pre_feedforward_layernorm"] if flags.sandwich else []
        norms += ["post_feedforward_layernorm"] if flags.sandwich or flags.post_norm else []
        for name in norms:
            setattr(self, name, rms_norm(config, flags, name))
        self.norms = norms
        self.self_attn = TFLlamaAttention(config, flags, name="self_attn")
        self.mlp = TFLlamaMLP(config, flags, name="mlp")
        self.residual_dropout = keras.layers.Dropout(flags.residual_dropout)

    def build(self, input_shape=None):
        parts = [self.self_attn, self.mlp, *(getattr(self, name) for name in self.norms)]
        build_children(self, *((part, None) for part in parts))

    def _branch(self, changed, training):
        if self.multiplier != 1.0:
            changed = changed * tf.cast(self.multiplier, changed.dtype)
        return self.residual_dropout(changed, training=training)

    def call(self, hidden_states, cos, sin, mask, past=None, training=False):
        normed = hidden_states if self.post_norm else self.input_layernorm(hidden_states)
        attended, present = self.self_attn(normed, cos, sin, mask, past=past, training=training)
        if self.sandwich or self.post_norm:
            attended = self.post_attention_layernorm(attended)
        hidden_states = hidden_states + self._branch(attended, training)
        if self.sandwich:
            changed = self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(hidden_states)))
        elif self.post_norm:
            changed = self.post_feedforward_layernorm(self.mlp(hidden_states))
        else:
            changed = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self._branch(changed, training), present


def causal_mask(attention_mask, length, cached, window: int | None = None):
    """float32 [batch, 1, q length, kv length]: 0 where a query may look, MASKED where not (later slots,
    padding, and with a sliding `window` the tokens `window` or more positions before it).

    The window counts positions, not cache slots: a token's position is the number of unmasked slots before it,
    so left padding, and the cache transformers' XLA generation preallocates (its unused slots masked, the new
    token's key in the last slot), move no window.
    """
    total = cached + length
    query = tf.range(cached, total)[:, None]
    allowed = (tf.range(total)[None, :] <= query)[None, None]
    padding = tf.cast(attention_mask[:, None, None, :total], tf.bool)
    if window is not None:
        positions = tf.cumsum(tf.cast(attention_mask[:, :total], tf.int32), axis=-1) - 1  # [batch, kv length]
        near = positions[:, -length:, None] - positions[:, None, :] < window  # [batch, q length, kv length]
        allowed = tf.logical_and(allowed, near[:, None])
    return tf.where(tf.logical_and(allowed, padding), 0.0, MASKED)
