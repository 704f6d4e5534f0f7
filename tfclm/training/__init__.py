"""The training stage: optimizer, train step, checkpoints, run state, tf.distribute, step counting and callbacks.

`callbacks` holds Keras callbacks usable in any `model.fit` and imports
neither `tfclm.config` nor the CLI. The run that puts them together is
`tfclm.run`, above this stage, the Hub's and the trackers'.
"""
