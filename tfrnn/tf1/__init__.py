"""TF1 checkpoints to Keras: the tutorials' graphs (:mod:`tfrnn.tf1.convert`, the command
``python -m tfrnn.convert``) and any ``rnn_cell`` model's recurrent layers
(:func:`recurrent_layers`)."""

from tfrnn.tf1.recurrent import recurrent_layers

__all__ = ["recurrent_layers"]
