"""The PTB-style word model of tensorflow/models' ``ptb_word_lm``, whole, from a checkpoint.

Its variables, under the user's scope (``Model/`` in the tutorial): ``embedding`` (vocab,
size), one recurrent scope (a ``MultiRNNCell`` of ``BasicLSTMCell(size, forget_bias=0.0)`` in
the tutorial, ``Model/RNN/rnn/multi_rnn_cell`` or, in its hand-unrolled versions,
``Model/RNN/multi_rnn_cell``), ``softmax_w`` (size, vocab) and ``softmax_b`` (vocab). It
computes ``logits = outputs · softmax_w + softmax_b`` on every step; the Keras model takes
token ids (batch, time) and returns those logits (batch, time, vocab).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfrnn.tf1 import cells as tf1_cells
from tfrnn.tf1.recurrent import RecurrentScope, build_layer

PARTS = ("embedding", "softmax_w", "softmax_b")


@dataclasses.dataclass(frozen=True)
class WordModel:
    """A checkpoint recognised as the word model.

    Attributes:
      prefix: the scope the parts sit under, ``Model/`` or empty.
      recurrent: its one recurrent scope.
      vocabulary: the number of words.
    """

    prefix: str
    recurrent: RecurrentScope
    vocabulary: int

    def variable_names(self) -> list[str]:
        return [self.prefix + part for part in PARTS] + self.recurrent.variable_names


def find_word_model(variables: dict, scopes: list[RecurrentScope]) -> WordModel | None:
    """The word model, if ``variables`` are exactly its parts and one recurrent scope of
    fitting sizes; else None (the variables are then converted part by part)."""
    if len(scopes) != 1 or scopes[0].bidirectional:
        return None
    (scope,) = scopes
    for prefix in _prefixes(scope.scope):
        names = [prefix + part for part in PARTS]
        if not all(name in variables for name in names):
            continue
        embedding, softmax_w, softmax_b = (np.shape(variables[name]) for name in names)
        vocabulary = embedding[0]
        fits = (
            len(embedding) == 2
            and embedding[1] == scope.input_size
            and softmax_w == (scope.output_size, vocabulary)
            and softmax_b == (vocabulary,)
        )
        model = WordModel(prefix, scope, vocabulary)
        if fits and set(model.variable_names()) == set(variables):
            return model
    return None


def _prefixes(scope: str) -> list[str]:
    """``a/b/c`` -> ``a/b/``, ``a/``, and the empty prefix."""
    parts = scope.split("/")[:-1]
    return ["/".join(parts[:count]) + "/" for count in range(len(parts), 0, -1)] + [""]


def build_word_model(
    model: WordModel, variables: dict, options: tf1_cells.RunTimeOptions
) -> keras.Model:
    """The Keras model: token ids (batch, time) int -> logits (batch, time, vocabulary)."""
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    embedding = keras.layers.Embedding(
        model.vocabulary, model.recurrent.input_size, name="embedding"
    )
    recurrent = build_layer(model.recurrent, variables, options)
    logits = keras.layers.Dense(model.vocabulary, name="logits")
    keras_model = keras.Model(token_ids, logits(recurrent(embedding(token_ids))), name="word_model")
    embedding.embeddings.assign(variables[model.prefix + "embedding"])
    logits.kernel.assign(variables[model.prefix + "softmax_w"])
    logits.bias.assign(variables[model.prefix + "softmax_b"])
    return keras_model
